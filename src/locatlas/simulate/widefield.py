"""Widefield z-stacks of thick samples with an in-focus ground truth.

The sample is a stack of thin fluorescent *layers* at known depths. Layer 0 lies
in the focal plane of the stack's centre plane (index ``n_z // 2``); the other
layers sit above and below it (cells in a thick tissue, a second cell layer, the
far side of a spheroid). Every layer is imaged with the widefield PSF slice for
its distance from each stack plane (:func:`locatlas.psf.defocus_psf`; every slice
conserves flux), so the out-of-focus layers pour haze into the in-focus plane.

**Truth.** The in-focus image is what the focal plane would show without any
other layer: ``truth = photons · gain · (layer_0 ⊛ h(0))`` in ADU above the camera
offset, where ``h(0)`` is the in-focus PSF slice. It is exactly the centre plane
of the noise-free stack minus the haze of the other layers and minus the offset,
so a perfect clearing (remove haze and offset, keep the in-focus light) recovers
it up to photon noise. The sharp object, the target of deconvolution, is
``photons · gain · plane`` for a 2D input. ``noise=False`` returns the expected
stack, so ``stack[focus] - truth - offset - background`` is the exact haze.

With a 2D input plane the other layers are rotated/flipped/shifted copies of it
(seeded), by default eight at 2.5–12 µm above and below, each 0.3–0.7 times as
bright: a thick sample whose haze comes from many depths. With a 3D input
volume (Z, Y, X) each of its planes is a layer at depth ``(j - Z//2) · z_step_um``
and the truth is the centre plane convolved with ``h(0)``; near-focus planes of a
thick volume then add some blur that the truth does not contain.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import scipy.fft
import scipy.ndimage as ndi

from locatlas.psf import defocus_psf, max_ray_angle_tan

__all__ = ["make_test_object", "simulate_widefield_stack"]

# Haze from objects further than this outside the field is ignored (µm).
_MAX_MARGIN_UM = 12.0


def make_test_object(shape: tuple[int, int], *, pixel_size_um: float, seed: int) -> np.ndarray:
    """A nucleus/cell-like fluorescence plane in [0, 1] (float32, (Y, X)).

    Textured nuclei (8–14 µm, chromatin texture, dark nucleoli, bright
    chromocentres), a faint diffuse cytoplasm around each with an ER-like network,
    bright puncta (vesicles, diffraction-sized) and a few thin filaments:
    structures from 0.2 µm to 14 µm.

    Examples
    --------
    >>> p = make_test_object((128, 128), pixel_size_um=0.1, seed=0)
    >>> p.shape, p.dtype, float(p.max()) <= 1.0
    ((128, 128), dtype('float32'), True)
    """
    ny, nx = int(shape[0]), int(shape[1])
    if ny < 8 or nx < 8:
        raise ValueError(f"shape must be at least 8x8, got {shape!r}")
    if not pixel_size_um > 0:
        raise ValueError(f"pixel_size_um must be > 0, got {pixel_size_um!r}")
    rng = np.random.default_rng(seed)
    p = pixel_size_um
    img = np.zeros((ny, nx), dtype=np.float64)
    cyto = np.zeros((ny, nx), dtype=np.float64)
    area_um2 = ny * nx * p * p
    n_cells = max(1, int(round(area_um2 / 700.0)))
    centres: list[tuple[float, float, float]] = []
    tries = 0
    while len(centres) < n_cells and tries < 50 * n_cells:
        tries += 1
        r_um = rng.uniform(4.0, 7.0)
        cy, cx = rng.uniform(0, ny * p), rng.uniform(0, nx * p)
        if all(math.hypot(cy - a, cx - b) > (r_um + c) * 1.15 for a, b, c in centres):
            centres.append((cy, cx, r_um))
    # chromatin texture: band-limited noise, ~0.6 µm grain
    tex = ndi.gaussian_filter(rng.standard_normal((ny, nx)), 0.6 / p)
    tex /= tex.std() + 1e-12
    ridge = ndi.gaussian_filter(rng.standard_normal((ny, nx)), 0.8 / p)
    ridge /= ridge.std() + 1e-12
    yy, xx = np.mgrid[0:ny, 0:nx]
    for cy, cx, r_um in centres:
        cell_r = r_um * rng.uniform(1.6, 2.2)
        y0, y1 = max(0, int((cy - cell_r) / p)), min(ny, int((cy + cell_r) / p) + 1)
        x0, x1 = max(0, int((cx - cell_r) / p)), min(nx, int((cx + cell_r) / p) + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        Y = yy[y0:y1, x0:x1] * p - cy
        X = xx[y0:y1, x0:x1] * p - cx
        th = rng.uniform(0, np.pi)
        ecc = rng.uniform(0.7, 1.0)
        u = X * np.cos(th) + Y * np.sin(th)
        v = -X * np.sin(th) + Y * np.cos(th)
        rn = np.sqrt(u**2 + (v / ecc) ** 2) / r_um
        # soft-edged nucleus with chromatin texture
        nuc = 1.0 / (1.0 + np.exp((rn - 1.0) / 0.02))
        level = rng.uniform(0.45, 0.8)
        body = level * (1.0 + 0.25 * tex[y0:y1, x0:x1]) * nuc
        for _ in range(rng.integers(1, 4)):  # dark nucleoli
            a, b = rng.uniform(-0.5, 0.5, 2) * r_um
            rr = rng.uniform(0.7, 1.5)
            body *= 1.0 - 0.6 * np.exp(-((u - a) ** 2 + (v - b) ** 2) / (2 * rr * rr))
        for _ in range(rng.integers(4, 12)):  # bright chromocentres
            a, b = rng.uniform(-0.75, 0.75, 2) * r_um
            rr = rng.uniform(0.2, 0.4)
            body += 0.35 * nuc * np.exp(-((u - a) ** 2 + (v - b) ** 2) / (2 * rr * rr))
        img[y0:y1, x0:x1] = np.maximum(img[y0:y1, x0:x1], body)
        rc = np.sqrt(X**2 + Y**2) / cell_r
        cell = 1.0 / (1.0 + np.exp((rc - 1.0) / 0.05))
        # faint diffuse cytoplasm plus an ER-like reticular network (thin ridges
        # of band-pass noise)
        net = np.abs(ridge[y0:y1, x0:x1]) < 0.12
        level = rng.uniform(0.08, 0.2)
        cyto[y0:y1, x0:x1] = np.maximum(
            cyto[y0:y1, x0:x1], cell * (0.015 + level * net * (1.0 - nuc))
        )
        # vesicles: diffraction-sized bright puncta in the cytoplasm
        n_ves = int(rng.integers(10, 30))
        ang = rng.uniform(0, 2 * np.pi, n_ves)
        rad = rng.uniform(r_um * 1.1, cell_r * 0.9, n_ves)
        for a, rr in zip(ang, rad, strict=True):
            py, px = int((cy + rr * np.sin(a)) / p), int((cx + rr * np.cos(a)) / p)
            if 0 <= py < ny and 0 <= px < nx:
                cyto[py, px] += rng.uniform(0.3, 0.8) * (0.15 / p) ** 2
        # a few filaments: straight segments leaving the nucleus
        for _ in range(int(rng.integers(2, 6))):
            a = rng.uniform(0, 2 * np.pi)
            t = np.linspace(r_um, cell_r, int(4 * cell_r / p))
            fy = ((cy + t * np.sin(a)) / p).astype(int)
            fx = ((cx + t * np.cos(a)) / p).astype(int)
            ok = (fy >= 0) & (fy < ny) & (fx >= 0) & (fx < nx)
            cyto[fy[ok], fx[ok]] += 0.25
    cyto = ndi.gaussian_filter(cyto, 0.1 / p)
    out = np.maximum(img, 0) + cyto * (img < 0.05)
    out = ndi.gaussian_filter(out, 0.05 / p)
    out /= max(out.max(), 1e-12)
    return out.astype(np.float32)


def _layers_from_plane(
    plane: np.ndarray,
    rng: np.random.Generator,
    *,
    z_step_um: float,
    n_z: int,
    n_haze: int,
    depth_range_um: tuple[float, float],
    haze_gain: tuple[float, float],
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    depths = [0.0]
    gains = [1.0]
    lo, hi = depth_range_um
    for k in range(n_haze):
        d = (1 if k % 2 == 0 else -1) * rng.uniform(lo, hi)
        if n_z > 1:  # on the stack grid, so the number of distinct defocus values stays small
            d = round(d / z_step_um) * z_step_um
        depths.append(float(d))
        gains.append(float(rng.uniform(*haze_gain)))
    layers = [plane]
    ny, nx = plane.shape
    for _ in range(n_haze):
        q = plane
        if ny == nx:
            q = np.rot90(q, int(rng.integers(0, 4)))
        if rng.random() < 0.5:
            q = q[:, ::-1]
        q = np.roll(q, (int(rng.integers(0, ny)), int(rng.integers(0, nx))), axis=(0, 1))
        layers.append(np.ascontiguousarray(q))
    return layers, np.asarray(depths), np.asarray(gains)


def simulate_widefield_stack(
    plane_or_volume: np.ndarray,
    *,
    n_z: int,
    z_step_um: float,
    pixel_size_um: float,
    na: float,
    wavelength_um: float,
    immersion_index: float,
    seed: int,
    haze_layers: int = 8,
    haze_depth_um: tuple[float, float] = (2.5, 12.0),
    haze_gain: tuple[float, float] = (0.3, 0.7),
    photons: float = 1000.0,
    background_photons: float = 20.0,
    offset_adu: float = 100.0,
    gain: float = 1.0,
    read_noise_e: float = 1.5,
    noise: bool = True,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Simulate a widefield z-stack of a thick sample and its in-focus truth.

    Parameters
    ----------
    plane_or_volume : numpy.ndarray
        (Y, X) object plane (e.g. :func:`make_test_object`, values ~[0, 1]) for the
        in-focus layer, or a (Z, Y, X) object volume sampled every ``z_step_um``.
    n_z : int
        Number of stack planes; plane ``n_z // 2`` is in focus on layer 0.
    z_step_um, pixel_size_um : float
        Voxel size, µm.
    na, wavelength_um, immersion_index : float
        Optics (emission wavelength in µm).
    seed : int
        Seeds the layer arrangement and the noise.
    haze_layers, haze_depth_um, haze_gain
        For a 2D input: number of out-of-focus layers, the range of their distance
        from the focal plane (µm, alternately above and below) and of their
        brightness relative to the in-focus layer.
    photons : float
        Expected photons per pixel of an object value of 1 (in focus, before blur).
    background_photons : float
        Uniform background (autofluorescence, medium), photons per pixel.
    offset_adu, gain, read_noise_e : float
        Camera offset (ADU), gain (ADU per electron), read noise (electrons RMS).
    noise : bool
        False returns the expected (noise-free) stack as float32 instead, with the
        same layers: ``stack - truth`` at the focus plane is then the exact haze
        plus offset and background.

    Returns
    -------
    stack : numpy.ndarray
        (n_z, Y, X) uint16 with Poisson and Gaussian read noise (float32 without
        noise when ``noise=False``).
    truth : numpy.ndarray
        (Y, X) float32, expected in-focus image of layer 0 in ADU above the offset,
        without haze, background or noise.
    meta : dict
        Optics, voxel size, camera, layer depths (µm) and gains, ``focus_index``.
    """
    obj = np.asarray(plane_or_volume, dtype=np.float64)
    if obj.ndim not in (2, 3) or min(obj.shape) < 1:
        raise ValueError(f"plane_or_volume must be (Y, X) or (Z, Y, X), got shape {obj.shape}")
    if not np.isfinite(obj).all() or obj.min() < 0:
        raise ValueError("plane_or_volume must be finite and non-negative")
    if int(n_z) < 1:
        raise ValueError(f"n_z must be >= 1, got {n_z!r}")
    if not (z_step_um > 0 and pixel_size_um > 0):
        raise ValueError("z_step_um and pixel_size_um must be > 0")
    rng = np.random.default_rng(seed)
    n_z = int(n_z)
    if obj.ndim == 2:
        layers, depths, gains = _layers_from_plane(
            obj,
            rng,
            z_step_um=z_step_um,
            n_z=n_z,
            n_haze=int(haze_layers),
            depth_range_um=(float(haze_depth_um[0]), float(haze_depth_um[1])),
            haze_gain=(float(haze_gain[0]), float(haze_gain[1])),
        )
    else:
        zc = obj.shape[0] // 2
        layers = [obj[j] for j in range(obj.shape[0])]
        depths = (np.arange(obj.shape[0]) - zc) * float(z_step_um)
        gains = np.ones(obj.shape[0])
        # the in-focus layer first
        order = [zc] + [j for j in range(obj.shape[0]) if j != zc]
        layers = [layers[j] for j in order]
        depths, gains = depths[order], gains[order]
    ny, nx = layers[0].shape
    planes_z = (np.arange(n_z) - n_z // 2) * float(z_step_um)

    # Mirror-padded object so the haze at the borders comes from a plausible
    # surrounding; the margin holds the widest cone (capped).
    tan = max_ray_angle_tan(na=na, immersion_index=immersion_index)
    dmax = float(np.abs(planes_z[:, None] - depths[None, :]).max())
    margin = int(math.ceil(min(dmax * tan + 2.0, _MAX_MARGIN_UM) / pixel_size_um))
    fy = int(scipy.fft.next_fast_len(ny + 2 * margin, real=True))
    fx = int(scipy.fft.next_fast_len(nx + 2 * margin, real=True))
    py0, px0 = (fy - ny) // 2, (fx - nx) // 2
    fts = []
    for layer in layers:
        padded = np.pad(layer, ((py0, fy - ny - py0), (px0, fx - nx - px0)), mode="symmetric")
        fts.append(scipy.fft.rfft2(padded, workers=-1))
    otf_cache: dict[float, np.ndarray] = {}

    def otf(d: float) -> np.ndarray:
        key = round(abs(d), 6)
        if key not in otf_cache:
            h = defocus_psf(
                [key],
                shape=(fy, fx),
                pixel_size_um=pixel_size_um,
                na=na,
                wavelength_um=wavelength_um,
                immersion_index=immersion_index,
            )[0]
            h = np.roll(h, (-(fy // 2), -(fx // 2)), axis=(0, 1))
            otf_cache[key] = scipy.fft.rfft2(h, workers=-1)
        return otf_cache[key]

    crop = (slice(py0, py0 + ny), slice(px0, px0 + nx))
    scale = photons * gain
    truth = scipy.fft.irfft2(fts[0] * otf(0.0), s=(fy, fx), workers=-1)[crop] * scale
    clean = np.empty((n_z, ny, nx), dtype=np.float64)
    for i, z in enumerate(planes_z):
        acc = np.zeros_like(fts[0])
        for ft, d, g in zip(fts, depths, gains, strict=True):
            acc += g * ft * otf(float(z - d))
        clean[i] = scipy.fft.irfft2(acc, s=(fy, fx), workers=-1)[crop]
    electrons = np.maximum(clean * photons + background_photons, 0)
    if not noise:
        expected = electrons * gain + offset_adu
    else:
        noisy = rng.poisson(electrons).astype(np.float64)
        noisy += rng.normal(0.0, read_noise_e, size=noisy.shape)
        expected = np.clip(np.rint(noisy * gain + offset_adu), 0, 65535)
    meta: dict[str, Any] = {
        "pixel_size_um": float(pixel_size_um),
        "z_step_um": float(z_step_um),
        "na": float(na),
        "wavelength_um": float(wavelength_um),
        "immersion_index": float(immersion_index),
        "n_z": n_z,
        "focus_index": n_z // 2,
        "layer_depths_um": [float(d) for d in depths],
        "layer_gains": [float(g) for g in gains],
        "photons": float(photons),
        "background_photons": float(background_photons),
        "offset_adu": float(offset_adu),
        "gain": float(gain),
        "read_noise_e": float(read_noise_e),
        "seed": int(seed),
        "truth": "layer 0 convolved with the in-focus PSF slice, ADU above offset, no noise",
    }
    stack = expected.astype(np.float32) if not noise else expected.astype(np.uint16)
    return stack, np.maximum(truth, 0).astype(np.float32), meta
