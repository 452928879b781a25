"""Computational clearing, PSF, Richardson–Lucy and the widefield simulator.

Every test asserts on numbers against a known truth: an analytic background, the
Airy FWHM, the simulator's in-focus plane, a flux budget.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from locatlas.clearing import (
    ClearingParams,
    clear_channels,
    clear_image,
    deconvolve,
    estimate_baseline,
    widefield_psf,
)
from locatlas.psf import airy_fwhm_um, defocus_psf, measure_fwhm
from locatlas.simulate.widefield import make_test_object, simulate_widefield_stack

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
OPTICS = {"na": 1.4, "wavelength_um": 0.52, "immersion_index": 1.515}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Two OpenMP threads on a busy 2-core machine run torch ~10x slower than one.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _psnr(truth: np.ndarray, x: np.ndarray) -> float:
    return float(peak_signal_noise_ratio(truth, x, data_range=float(np.ptp(truth))))


def _ssim(truth: np.ndarray, x: np.ndarray) -> float:
    return float(structural_similarity(truth, x, data_range=float(np.ptp(truth))))


@pytest.fixture(scope="module")
def plane_case():
    """A 384² simulated widefield plane (thick sample, 8 haze layers) with its truth."""
    obj = make_test_object((384, 384), pixel_size_um=0.1, seed=3)
    stack, truth, meta = simulate_widefield_stack(
        obj, n_z=1, z_step_um=0.3, pixel_size_um=0.1, seed=13, **OPTICS
    )
    return stack[0].astype(np.float32) - np.float32(meta["offset_adu"]), truth, meta


# ----------------------------------------------------------------------------- PSF


def test_psf_sums_to_one_and_has_airy_fwhm():
    p = 0.04
    h = widefield_psf(shape=(65, 65), pixel_size_um=p, z_step_um=None, **OPTICS)
    assert h.dtype == np.float32 and h.shape == (65, 65)
    assert abs(float(h.sum()) - 1.0) < 1e-5
    assert np.unravel_index(np.argmax(h), h.shape) == (32, 32)
    np.testing.assert_allclose(h, h[::-1, ::-1], atol=1e-7)
    fwhm = measure_fwhm(h[32], spacing=p)
    expected = airy_fwhm_um(na=1.4, wavelength_um=0.52)  # 0.514 λ/NA = 0.191 µm
    assert abs(fwhm - expected) / expected < 0.05, (fwhm, expected)


def test_psf_3d_normalized_symmetric_and_axial_fwhm():
    h = widefield_psf(shape=(41, 65, 65), pixel_size_um=0.1, z_step_um=0.1, **OPTICS)
    assert abs(float(h.sum()) - 1.0) < 1e-5
    assert np.unravel_index(np.argmax(h), h.shape) == (20, 32, 32)
    np.testing.assert_allclose(h, h[::-1], atol=1e-8)  # aberration-free: symmetric in z
    # non-paraxial axial FWHM of a widefield PSF: 0.88 λ / (n - sqrt(n² - NA²))
    n, na, lam = 1.515, 1.4, 0.52
    expected = 0.88 * lam / (n - np.sqrt(n * n - na * na))
    fwhm_z = measure_fwhm(h[:, 32, 32], spacing=0.1)
    assert abs(fwhm_z - expected) / expected < 0.1, (fwhm_z, expected)


def test_defocus_slices_conserve_flux_and_spread():
    s = defocus_psf([0.0, 1.0, 3.0], shape=(201, 201), pixel_size_um=0.1, **OPTICS)
    np.testing.assert_allclose(s.sum(axis=(1, 2)), 1.0, atol=1e-9)
    yy, xx = np.mgrid[-100:101, -100:101]
    r2 = [(sl * (yy**2 + xx**2)).sum() for sl in s]
    assert r2[0] < r2[1] < r2[2]
    assert s[0].max() > 10 * s[2].max()


# ----------------------------------------------------------------------------- baseline


def _smooth_background_with_peaks(seed: int = 0):
    rng = np.random.default_rng(seed)
    ny, nx, p = 320, 352, 0.1
    yy, xx = np.mgrid[0:ny, 0:nx] * p
    bg = 300.0 + 120.0 * np.sin(2 * np.pi * yy / 25.0) * np.cos(2 * np.pi * xx / 30.0)
    sig = np.zeros((ny, nx))
    idx = rng.choice(ny * nx, size=ny * nx // 150, replace=False)
    sig.flat[idx] = rng.uniform(200, 800, idx.size) * 2 * np.pi * 1.5**2
    sig = ndi.gaussian_filter(sig, 1.5)  # diffraction-sized spots, ~0.35 µm FWHM
    for cy, cx in ((8.0, 9.0), (22.0, 25.0)):  # two 3 µm blobs, brighter than noise
        sig += 400.0 * (((yy - cy) ** 2 + (xx - cx) ** 2) < 1.5**2)
    y = rng.poisson(bg + sig).astype(np.float32)
    return y, bg, sig, p


def test_baseline_recovers_smooth_background_under_peaks():
    y, bg, sig, p = _smooth_background_with_peaks()
    b = estimate_baseline(y, pixel_size_um=p, feature_scale_um=5.0, device="cpu")
    assert b.shape == y.shape and b.dtype == np.float32
    err = b - bg
    noise = np.sqrt(bg.mean())  # ~17 counts
    assert abs(float(err.mean())) < 0.3 * noise, err.mean()
    assert float(np.sqrt((err**2).mean())) < 0.5 * noise, np.sqrt((err**2).mean())
    # under the blobs the background is interpolated, not raised to the signal
    assert float(np.abs(err[sig > 100]).mean()) < noise
    # the subtracted image keeps the signal: 95 % of the peak flux survives
    cleared = clear_image(y, pixel_size_um=p, feature_scale_um=5.0, device="cpu")
    assert cleared[sig > 50].sum() / (sig[sig > 50].sum()) > 0.95


def _noise_model_by_masks(lev: torch.Tensor, r: torch.Tensor) -> list[tuple[float, float]]:
    """The noise model's (level, σ) per bin written plainly: bucketize, then a mask per bin."""
    srt = torch.sort(lev).values
    cuts = srt[(torch.arange(1, 16) * srt.numel()) // 16]
    bins = torch.bucketize(lev, cuts, right=True)
    out = []
    for i in range(16):
        sel = bins == i
        if int(sel.sum()) < 16:
            continue
        dev = torch.abs(r[sel] - torch.median(r[sel]))
        sig = float(torch.kthvalue(dev, max(1, int(0.25 * dev.numel()))).values) / 0.31864
        out.append((float(torch.median(lev[sel])), sig * sig))
    return out


@pytest.mark.parametrize("levels", ["integer", "continuous"])
def test_noise_model_bins_equal_a_mask_per_bin(levels, monkeypatch):
    # the fit reads each bin as a run of the sorted levels; ties at the cuts (integer
    # images) must fall in the same bins as bucketize puts them
    from locatlas import clearing

    rng = np.random.default_rng(5)
    n = 20_000
    lev = rng.integers(90, 140, n) if levels == "integer" else rng.gamma(2.0, 100.0, n)
    lev = torch.from_numpy(lev.astype(np.float32))
    r = torch.from_numpy(rng.normal(0, 1, n).astype(np.float32)) * torch.sqrt(lev)
    fitted, polyfit = [], np.polyfit
    monkeypatch.setattr(
        clearing.np, "polyfit", lambda x, y, deg: fitted.append((x, y)) or polyfit(x, y, deg)
    )
    clearing._noise_model(torch.stack([lev, r]))
    mu, var = fitted[0]
    assert list(zip(mu.tolist(), var.tolist(), strict=True)) == _noise_model_by_masks(lev, r)


def test_strength_scales_the_subtracted_background():
    y, bg, _, p = _smooth_background_with_peaks(1)
    full = clear_image(y, pixel_size_um=p, strength=1.0, device="cpu")
    half = clear_image(y, pixel_size_um=p, strength=0.5, device="cpu")
    none = clear_image(y, pixel_size_um=p, strength=0.0, device="cpu")
    np.testing.assert_array_equal(none, y)
    assert 0.4 < (half - full).mean() / bg.mean() < 0.6


def test_clearing_improves_psnr_and_ssim_on_simulated_widefield(plane_case):
    y, truth, meta = plane_case
    raw_p, raw_s = _psnr(truth, y), _ssim(truth, y)
    cleared = clear_image(y, pixel_size_um=0.1, device="cpu")
    combined = clear_image(
        y, pixel_size_um=0.1, mode="combined", regularization=0.002, device="cpu", **OPTICS
    )
    for out in (cleared, combined):
        assert out.dtype == np.float32 and out.shape == y.shape and out.min() >= 0
        assert _psnr(truth, out) > raw_p + 15.0, (_psnr(truth, out), raw_p)
        assert _ssim(truth, out) > raw_s + 0.3, (_ssim(truth, out), raw_s)
    # haze (mean excess over the truth) mostly gone
    assert abs(float(cleared.mean() - truth.mean())) < 0.15 * float(y.mean() - truth.mean())


def test_stack_clearing_per_plane_matches_2d(plane_case):
    y, truth, _ = plane_case
    stack = np.stack([y, y[::-1], y[:, ::-1]])
    out3 = clear_image(stack, pixel_size_um=0.1, z_step_um=0.3, device="cpu")
    out2 = clear_image(y[::-1], pixel_size_um=0.1, device="cpu")
    assert out3.shape == stack.shape
    # one noise model for the stack, so planes agree closely but not bit for bit
    assert np.abs(out3[1] - out2).mean() < 0.02 * out2.mean()
    assert _psnr(truth, out3[0]) > _psnr(truth, y) + 15.0
    # the optional 3D penalty: on planes that agree it matches the per-plane result
    same = np.stack([y, y, y])
    out3d = clear_image(
        same, pixel_size_um=0.1, z_step_um=0.3, feature_scale_z_um=5.0, device="cpu"
    )
    np.testing.assert_allclose(out3d[1], out3[0], atol=0.02 * float(out3[0].max()))
    assert _psnr(truth, out3d[1]) > _psnr(truth, y) + 15.0


def test_tiled_equals_untiled_no_seams():
    rng = np.random.default_rng(5)
    y, _, _, p = _smooth_background_with_peaks(2)
    y = np.concatenate([y, y[:, :97]], axis=1)[:301]  # sizes that are not multiples
    y = y + rng.normal(0, 1, y.shape).astype(np.float32)
    whole = estimate_baseline(y, pixel_size_um=p, feature_scale_um=5.0, device="cpu")
    for tile in (64, 100, 256):
        tiled = estimate_baseline(
            y, pixel_size_um=p, feature_scale_um=5.0, tile_size=tile, device="cpu"
        )
        np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-3)
    c_whole = clear_image(y, pixel_size_um=p, device="cpu")
    c_tiled = clear_image(y, pixel_size_um=p, tile_size=64, device="cpu")
    np.testing.assert_allclose(c_tiled, c_whole, rtol=0, atol=1e-3)
    # and a stack, tiled, equals itself untiled
    st = np.stack([y, y * 0.5])
    np.testing.assert_allclose(
        estimate_baseline(st, pixel_size_um=p, feature_scale_um=5.0, tile_size=96, device="cpu"),
        estimate_baseline(st, pixel_size_um=p, feature_scale_um=5.0, device="cpu"),
        rtol=0,
        atol=1e-3,
    )


def test_an_axis_that_fits_in_a_tile_is_one_tile():
    # 2048 px at m = 3 would be cut at 2046 (the largest multiple of m) into a tile and
    # a 2-px sliver; the sliver cost a copy and a pass of every step for nothing
    from locatlas.clearing import _Baseline

    y = np.random.default_rng(0).poisson(100.0, (1, 2048, 700)).astype(np.float32)
    base = _Baseline(
        y, pixel_size_um=0.2, feature_scale_um=5.0, z_step_um=None, feature_scale_z_um=None,
        iterations=2, threshold=4.0, tile_size=2048, dev=torch.device("cpu"),
    )  # fmt: skip
    assert base.m == 3 and base.rows == [(0, 2048)] and base.cols == [(0, 700)]
    cut = _Baseline(
        y, pixel_size_um=0.2, feature_scale_um=5.0, z_step_um=None, feature_scale_z_um=None,
        iterations=2, threshold=4.0, tile_size=1024, dev=torch.device("cpu"),
    )  # fmt: skip
    assert cut.rows == [(0, 1023), (1023, 2046), (2046, 2048)] and cut.cols == [(0, 700)]
    np.testing.assert_allclose(cut.coarse.numpy(), base.coarse.numpy(), rtol=0, atol=1e-3)


def test_cpu_results_are_deterministic(plane_case):
    y, _, _ = plane_case
    a = clear_image(y, pixel_size_um=0.1, mode="combined", iterations=5, device="cpu", **OPTICS)
    b = clear_image(y, pixel_size_um=0.1, mode="combined", iterations=5, device="cpu", **OPTICS)
    assert a.tobytes() == b.tobytes()


def test_inputs_are_not_modified(plane_case):
    y, _, _ = plane_case
    before = y.copy()
    clear_image(y, pixel_size_um=0.1, device="cpu")
    deconvolve(y, pixel_size_um=0.1, iterations=2, device="cpu", **OPTICS)
    np.testing.assert_array_equal(y, before)


# ----------------------------------------------------------------------------- deconvolution


def _beads(p: float = 0.08, background: float = 0.0):
    rng = np.random.default_rng(2)
    obj = np.zeros((160, 176))
    pos = rng.integers(45, 115, size=(12, 2))
    obj[pos[:, 0], pos[:, 1]] = rng.uniform(2e4, 5e4, 12)
    h = widefield_psf(shape=(51, 51), pixel_size_um=p, z_step_um=None, **OPTICS)
    img = ndi.convolve(obj, h.astype(np.float64), mode="constant")
    return rng.poisson(img + background).astype(np.float32), obj, p


def test_richardson_lucy_sharpens_and_conserves_flux():
    y, obj, p = _beads()
    u = deconvolve(y, pixel_size_um=p, iterations=30, device="cpu", **OPTICS)
    assert u.shape == y.shape and u.dtype == np.float32 and u.min() >= 0
    # RL keeps Σ h⊛u = Σ y; the beads lie well inside, so Σ u ≈ Σ y
    assert abs(float(u.sum()) / float(y.sum()) - 1.0) < 0.01
    assert u.max() > 2.0 * y.max()  # sharper: the light gathers back into the beads
    i, j = np.unravel_index(np.argmax(obj), obj.shape)
    assert measure_fwhm(u[i, j - 10 : j + 11]) < 0.8 * measure_fwhm(y[i, j - 10 : j + 11])
    # with a known background the bead flux is what stands above it
    yb, _, _ = _beads(background=20.0)
    ub = deconvolve(yb, pixel_size_um=p, iterations=30, background=20.0, device="cpu", **OPTICS)
    near = ndi.binary_dilation(obj > 0, iterations=8)  # RL's positivity biases the rest
    assert abs(float(ub[near].sum()) / float(obj.sum()) - 1.0) < 0.03


def test_regularized_richardson_lucy_is_smoother_on_noise():
    rng = np.random.default_rng(3)
    y = rng.poisson(50.0, (96, 96)).astype(np.float32)
    plain = deconvolve(y, pixel_size_um=0.1, iterations=20, device="cpu", **OPTICS)
    for reg in ("tv", "tikhonov"):
        smooth = deconvolve(
            y,
            pixel_size_um=0.1,
            iterations=20,
            regularization=0.01,
            regularizer=reg,
            device="cpu",
            **OPTICS,
        )
        assert smooth.std() < plain.std()
        assert abs(smooth.mean() - plain.mean()) < 0.02 * plain.mean()


def test_deconvolve_3d_stack_runs_and_conserves_flux():
    h = widefield_psf(shape=(9, 33, 33), pixel_size_um=0.1, z_step_um=0.2, **OPTICS)
    obj = np.zeros((9, 48, 48))
    obj[4, 24, 24] = 1e5
    y = ndi.convolve(obj, h.astype(np.float64), mode="constant").astype(np.float32)
    u = deconvolve(y, pixel_size_um=0.1, z_step_um=0.2, iterations=15, device="cpu", **OPTICS)
    assert u.shape == y.shape
    assert u[4, 24, 24] > 3 * y[4, 24, 24]
    assert np.unravel_index(np.argmax(u), u.shape) == (4, 24, 24)


# ----------------------------------------------------------------------------- API, config


def test_clear_channels_matches_per_channel_calls(plane_case):
    y, _, _ = plane_case
    img = np.stack([y[:128, :128], y[128:256, 128:256]])
    out = clear_channels(
        img,
        wavelengths_um=[0.46, 0.52],
        pixel_size_um=0.1,
        mode="combined",
        iterations=3,
        device="cpu",
    )
    ref = clear_image(
        img[1], pixel_size_um=0.1, mode="combined", iterations=3, wavelength_um=0.52, device="cpu"
    )
    assert out.shape == img.shape
    np.testing.assert_array_equal(out[1], ref)
    with pytest.raises(ValueError, match="wavelengths"):
        clear_channels(img, wavelengths_um=[0.5], pixel_size_um=0.1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "sharpen"}, "mode"),
        ({"strength": 1.5}, "strength"),
        ({"feature_scale_um": 0.0}, "feature_scale_um"),
        ({"pixel_size_um": -1.0}, "pixel_size_um"),
        ({"regularizer": "l1"}, "regularizer"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_bad_parameters_raise_clear_errors(kwargs, match):
    y = np.ones((32, 32), np.float32)
    kw = {"pixel_size_um": 0.1, **kwargs}
    with pytest.raises(ValueError, match=match):
        clear_image(y, **kw)


def test_bad_images_raise_clear_errors():
    with pytest.raises(ValueError, match="shape"):
        clear_image(np.ones((2, 2, 8, 8)), pixel_size_um=0.1)
    with pytest.raises(ValueError, match="NaN"):
        clear_image(np.full((8, 8), np.nan), pixel_size_um=0.1)
    with pytest.raises(ValueError, match="z_step_um"):
        clear_image(np.ones((8, 8)), pixel_size_um=0.1, z_step_um=0.3)
    with pytest.raises(ValueError, match="immersion_index"):
        widefield_psf(
            shape=(9, 9),
            pixel_size_um=0.1,
            z_step_um=None,
            na=1.6,
            wavelength_um=0.5,
            immersion_index=1.515,
        )


def test_params_from_config_round_trip():
    p = ClearingParams.from_config({"mode": "combined", "feature_scale_um": 4.0})
    assert p.mode == "combined" and p.feature_scale_um == 4.0 and p.strength == 1.0
    y = np.random.default_rng(0).poisson(100, (64, 64)).astype(np.float32)
    out = clear_image(y, pixel_size_um=0.1, **{**p.as_kwargs(), "iterations": 2, "device": "cpu"})
    assert out.shape == y.shape
    with pytest.raises(ValueError, match="unknown clear config keys"):
        ClearingParams.from_config({"feature_scale": 4.0})
    with pytest.raises(ValueError, match="strength"):
        ClearingParams(strength=2.0)


# ----------------------------------------------------------------------------- simulator


def test_simulator_truth_is_the_haze_free_focus_plane():
    obj = make_test_object((96, 96), pixel_size_um=0.1, seed=0)
    kw = {"n_z": 5, "z_step_um": 0.5, "pixel_size_um": 0.1, "seed": 4, **OPTICS}
    # without haze layers the noise-free focus plane is exactly truth + offset + background
    clean, truth, meta = simulate_widefield_stack(obj, haze_layers=0, noise=False, **kw)
    f = meta["focus_index"]
    assert f == 2 and truth.dtype == np.float32 and clean.shape == (5, 96, 96)
    np.testing.assert_allclose(
        clean[f] - meta["offset_adu"] - meta["background_photons"] * meta["gain"],
        truth,
        atol=1e-2,
    )
    # photons are conserved plane by plane (flux through focus)
    np.testing.assert_allclose(clean.sum(axis=(1, 2)), clean[f].sum(), rtol=1e-3)
    # with haze the focus plane carries much more light than the truth
    noisy, truth2, meta2 = simulate_widefield_stack(obj, **kw)
    assert noisy.dtype == np.uint16 and noisy.shape == (5, 96, 96)
    np.testing.assert_allclose(truth2, truth, atol=1e-3)
    assert noisy[f].mean() - meta2["offset_adu"] > 2 * truth.mean()
    again, _, _ = simulate_widefield_stack(obj, **kw)
    assert again.tobytes() == noisy.tobytes()
    assert len(meta2["layer_depths_um"]) == 9 and meta2["layer_depths_um"][0] == 0.0


def test_make_test_object_is_seeded_and_cell_like():
    a = make_test_object((256, 256), pixel_size_um=0.1, seed=1)
    b = make_test_object((256, 256), pixel_size_um=0.1, seed=1)
    assert a.tobytes() == b.tobytes()
    assert a.dtype == np.float32 and 0.0 <= a.min() and a.max() == pytest.approx(1.0)
    assert 0.02 < (a > 0.3).mean() < 0.6  # nuclei cover part of the field


# ----------------------------------------------------------------------------- GPU, real data


@pytest.mark.gpu
def test_cuda_matches_cpu(plane_case):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    y, _, _ = plane_case
    for mode in ("clear", "combined"):
        cpu = clear_image(y, pixel_size_um=0.1, mode=mode, device="cpu", **OPTICS)
        gpu = clear_image(y, pixel_size_um=0.1, mode=mode, device="cuda", **OPTICS)
        assert np.abs(gpu - cpu).max() < 1e-3 * float(cpu.max()), mode
    st = np.stack([y[:128, :128]] * 3)
    cpu = deconvolve(st, pixel_size_um=0.1, z_step_um=0.3, iterations=5, device="cpu", **OPTICS)
    gpu = deconvolve(st, pixel_size_um=0.1, z_step_um=0.3, iterations=5, device="cuda", **OPTICS)
    assert np.abs(gpu - cpu).max() < 1e-3 * float(cpu.max())


def test_real_dapi_stack_clears():
    path = SHARED_DATA / "widefield_stacks" / "dapi_001.tif"
    if not path.is_file():
        pytest.skip(f"real data not available: {path} is absent (no ../shared/data)")
    import tifffile

    meta = json.loads(path.with_suffix(".psf.json").read_text())
    stack = tifffile.imread(path)
    px = meta["voxel_size_nm"]["x"] / 1000.0
    dz = meta["voxel_size_nm"]["z"] / 1000.0
    optics = {
        "na": meta["numerical_aperture"],
        "wavelength_um": meta["emission_wavelength_nm"] / 1000.0,
        "immersion_index": meta["immersion_refractive_index"],
    }
    out = clear_image(stack, pixel_size_um=px, z_step_um=dz, device="cpu", **optics)
    assert out.shape == stack.shape and np.isfinite(out).all() and out.min() >= 0
    z = stack.shape[0] // 2
    raw = stack[z].astype(np.float64)
    # the haze floor (camera offset + out-of-focus light) is removed: the darkest
    # decile drops from ~2000 counts to near zero, contrast (std/mean) rises
    assert np.percentile(out[z], 10) < 0.05 * np.percentile(raw, 10)
    assert out[z].std() / out[z].mean() > 1.3 * raw.std() / raw.mean()
    # out-of-focus light: the outermost planes (the nucleus far out of focus, all
    # haze) carry 90 % of the middle plane's light raw, and almost none cleared
    raw_ratio = stack[0].mean() / stack[z].mean()
    out_ratio = out[0].mean() / out[z].mean()
    assert raw_ratio > 0.8 and out_ratio < 0.1 * raw_ratio, (raw_ratio, out_ratio)
    comb = clear_image(
        stack,
        pixel_size_um=px,
        z_step_um=dz,
        mode="combined",
        iterations=10,
        device="cpu",
        **optics,
    )
    assert np.isfinite(comb).all() and comb[z].std() / comb[z].mean() > raw.std() / raw.mean()
