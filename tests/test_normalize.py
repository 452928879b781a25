"""Normalization: dtype and channel handling, flat-field, QC, and whole shards into
OME-Zarr with quarantine, reruns and real HPA fields."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr
from ome_zarr_models.v05.hcs import HCS
from scipy import ndimage

from locatlas import ROLES
from locatlas.flatfield import (
    apply_flatfield,
    block_mean,
    fit_flatfield,
    flatfield_for_roles,
    load_flatfield,
    save_flatfield,
)
from locatlas.ids import make_field_id, make_view_id
from locatlas.normalize import (
    DEFAULT_PARAMS,
    PARAM_DOCS,
    estimate_plate_flatfield,
    normalize_shard,
    prepare_field,
    read_files_pixels,
    resample_yx,
    role_order,
    to_uint16,
)
from locatlas.omezarr import read_field_image, write_plate_metadata
from locatlas.qc import focus_score, signal_to_noise

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def synthetic_field(shape=(256, 256), *, pixel_size_um=0.5, density=0.004, seed=0):
    """(4, y, x) float32 HPA-like field in ROLES order, noise-free, peak ~20000.

    Nuclei: textured disks of 5 µm radius; microtubules/ER: cytoplasm around them;
    protein: sparse spots on background. Cells also lie beyond the borders, so the
    content is statistically the same everywhere (as on a real plate).
    """
    rng = np.random.default_rng(seed)
    r = 5.0 / pixel_size_um
    m = int(3 * r)
    y, x = shape[0] + 2 * m, shape[1] + 2 * m
    seeds = np.zeros((y, x), np.float32)
    n = rng.poisson(density * y * x * pixel_size_um**2)
    seeds[rng.integers(0, y, n), rng.integers(0, x, n)] = rng.uniform(0.6, 1, n)
    yy, xx = np.mgrid[-int(r) : int(r) + 1, -int(r) : int(r) + 1]
    nuc = ndimage.maximum_filter(seeds, footprint=(yy**2 + xx**2) <= r * r)
    tex = ndimage.gaussian_filter(rng.normal(size=(y, x)).astype(np.float32), 0.6 / pixel_size_um)
    nuc = ndimage.gaussian_filter(nuc * (1 + 0.4 * tex / tex.std()), 0.2 / pixel_size_um)
    cyto = ndimage.gaussian_filter((nuc > 0.1).astype(np.float32), 1.2 * r) * (nuc < 0.1)
    fib = np.abs(ndimage.gaussian_filter(rng.normal(size=(y, x)).astype(np.float32), 0.3))
    spots = ndimage.gaussian_filter((rng.random((y, x)) > 0.997).astype(np.float32), 1.0)
    chans = np.stack([nuc, cyto * (0.3 + fib / fib.max()), cyto, spots * cyto])[:, m:-m, m:-m]
    chans = np.clip(chans, 0, None) / (chans.reshape(4, -1).max(1)[:, None, None] + 1e-9)
    return ((chans + 0.03) * 20000).astype(np.float32)


def noisy(field, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.poisson(np.clip(field, 0, None)) + 100).clip(0, 65535).astype(np.uint16)


def shading(shape):
    """cos⁴-like vignetting, off centre, 2x from centre to corner; mean 1."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]] / (np.array(shape)[:, None, None] - 1)
    s = (1 + ((yy - 0.55) ** 2 + (xx - 0.4) ** 2) / 1.5) ** -2
    return s / s.mean()


def make_rows(tmp_path, fields, *, plate="P1", order=(3, 1, 0, 2), fmt="tif", pixel=0.5):
    """Write (4, y, x) fields as one file per channel (HPA layout, channels in ``order``
    of ROLES) and return manifest rows. ``fields``: {(well, field, t): array}."""
    rows = []
    for (well, field, t), data in fields.items():
        fid = make_field_id(plate, well, field, t)
        paths = []
        for c in order:
            p = tmp_path / "src" / f"{fid}_{ROLES[c]}.{fmt}"
            p.parent.mkdir(parents=True, exist_ok=True)
            if fmt == "tif":
                tifffile.imwrite(p, data[c])
            else:
                import imagecodecs

                p.write_bytes(imagecodecs.png_encode(data[c]))
            paths.append(str(p))
        rows.append(
            {
                "field_id": fid,
                "view_id": make_view_id(plate, well, field),
                "plate": plate,
                "well": well,
                "field": field,
                "timepoint": t,
                "source": json.dumps(paths),
                "format": fmt,
                "scene": 0,
                "channel_roles": json.dumps([ROLES[c] for c in order]),
                "pixel_size_um": pixel,
                "z_step_um": None,
                "size_c": 4,
                "size_z": 1,
                "size_y": data.shape[-2],
                "size_x": data.shape[-1],
                "dtype": str(data.dtype),
                "shard": f"{plate}-00000",
            }
        )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- units


def test_role_order_and_dtypes():
    assert role_order(["protein", "", "nucleus"]) == ([2, 0], ["nucleus", "protein"])
    with pytest.raises(ValueError, match="mapped to channels"):
        role_order(["nucleus", "nucleus"])
    with pytest.raises(ValueError, match="unknown channel role"):
        role_order(["dapi"])
    with pytest.raises(ValueError, match="no channel"):
        role_order(["", "ignore"])
    u8 = np.array([[0, 1, 255]], np.uint8)
    out, scale, sat, quantum = to_uint16(u8)
    assert out.dtype == np.uint16 and out.tolist() == [[0, 257, 65535]]
    assert (scale, sat, quantum) == (257.0, 65535.0, 257.0)
    kept, scale, sat, _ = to_uint16(u8, uint8="keep")
    assert kept.dtype == np.uint8 and (scale, sat) == (1.0, 255.0)
    out, scale, sat, _ = to_uint16(np.array([0.0, 0.5, 1.0], np.float32))
    assert out.tolist() == [0, 32768, 65535] and scale == 65535.0 and sat == 65535.0
    out, scale, sat, _ = to_uint16(np.array([0.0, 10.0, 20.0]))
    assert out.tolist() == [0, 32768, 65535] and scale == pytest.approx(65535 / 20)
    assert np.isinf(sat)
    out, scale, *_ = to_uint16(np.array([0, 4095], np.int32), bit_depth=12)
    assert out.dtype == np.uint16 and scale == 1.0
    assert to_uint16(np.array([0, 4095], np.uint16), bit_depth=12)[2] == 4095.0


def test_prepare_field_reorders_scales_and_resamples():
    src = np.random.default_rng(0).integers(0, 256, (3, 1, 64, 96), dtype=np.uint8)
    image, rec = prepare_field(
        src, channel_roles=["protein", "", "nucleus"], pixel_size_um=0.2, params={}
    )
    assert rec["roles"] == ["nucleus", "protein"]
    np.testing.assert_array_equal(image[0], src[2].astype(np.uint16) * 257)
    np.testing.assert_array_equal(image[1], src[0].astype(np.uint16) * 257)
    assert rec["intensity_scale"] == 257.0 and rec["pixel_size_um"] == 0.2
    half, rec = prepare_field(
        src,
        channel_roles=["protein", "", "nucleus"],
        pixel_size_um=0.2,
        params={"target_pixel_size_um": 0.4},
    )
    assert half.shape == (2, 1, 32, 48) and half.dtype == np.uint16
    assert rec["pixel_size_um"] == 0.4 and rec["source_pixel_size_um"] == 0.2
    # anti-aliased downsampling keeps the mean
    assert abs(half.mean() - image.mean()) < 0.01 * image.mean()
    assert resample_yx(np.ones((2, 10, 10)), 1.5).shape == (2, 15, 15)
    with pytest.raises(ValueError, match="channel_roles lists"):
        prepare_field(src, channel_roles=["nucleus"], pixel_size_um=0.2)


# ----------------------------------------------------------------------------- flat-field


def test_flatfield_recovers_simulated_shading(tmp_path):
    shape = (192, 192)
    s = shading(shape)
    fields = [
        noisy(synthetic_field(shape, pixel_size_um=1.0, seed=i) * s, seed=i) for i in range(40)
    ]
    flat, info = fit_flatfield(
        (f.astype(np.float32) for f in fields), offset=100.0, return_info=True
    )
    assert [i["applied"] for i in info] == [True] * 4
    err = np.abs(flat / s - 1)
    # Sparse protein spots: the per-pixel median sees the shaded background: only the
    # degree-2 model's own limit remains (this cos⁴ profile is not exactly Gaussian).
    assert err[3].max() < 0.05
    # Dense structures (nuclei, cytoplasm) are limited by how much 40 fields vary.
    assert np.sqrt((err**2).mean(axis=(1, 2))).max() < 0.03
    assert np.allclose(flat.mean(axis=(1, 2)), 1.0, atol=1e-4)
    # a degree-4 model follows the profile to <1% where the data are clean
    flat4 = fit_flatfield([f[3:].astype(np.float32) for f in fields], offset=100.0, order=4)
    assert np.abs(flat4[0] / s - 1).max() < 0.01
    # self-check: too few fields, or a fit noisier than allowed, is not applied
    few, info = fit_flatfield(
        [f.astype(np.float32) for f in fields[:6]], offset=100.0, return_info=True
    )
    assert (few == 1).all() and not any(i["applied"] for i in info)
    strict, info = fit_flatfield(
        [f.astype(np.float32) for f in fields], offset=100.0, max_error=0.005, return_info=True
    )
    assert [i["applied"] for i in info] == [False, False, False, True]
    assert (strict[:3] == 1).all() and info[0]["error"] > 0.005
    # correction flattens the shading of the protein background
    corrected = apply_flatfield(fields[0][None, 3:4], flat[3:4], offset=100.0)[0, 0]
    bg = ndimage.median_filter(corrected, 15)
    raw_bg = ndimage.median_filter(fields[0][3].astype(np.float32), 15)
    assert np.std(bg) < 0.25 * np.std(raw_bg)
    # save / load
    save_flatfield(tmp_path / "ff.npz", flat)
    back = load_flatfield(tmp_path / "ff.npz")
    assert set(back) == set(ROLES)
    np.testing.assert_allclose(
        flatfield_for_roles(back, ["nucleus", "protein"], shape), flat[[0, 3]]
    )
    with pytest.raises(ValueError, match="differs from the first"):
        fit_flatfield([np.ones((1, 8, 8)), np.ones((1, 9, 8))])


def test_estimate_plate_flatfield_from_rows(tmp_path):
    shape = (128, 160)
    s = shading(shape)
    fields = {
        ("B02", f, 0): noisy(synthetic_field(shape, pixel_size_um=1.0, seed=f) * s, seed=f)
        for f in range(1, 25)
    }
    rows = make_rows(tmp_path, fields, order=(3, 0))  # protein and nucleus only
    bad = rows.iloc[0].to_dict() | {"field_id": "P1_B02_99_t000", "view_id": "P1_B02_99"}
    bad["source"] = json.dumps([str(tmp_path / "missing.tif")] * 2)
    rows = pd.concat([rows, pd.DataFrame([bad])], ignore_index=True)
    params = {"flatfield_offset": 100.0}
    flat = estimate_plate_flatfield(
        rows, sample_size=30, seed=1, reader=read_files_pixels, params=params
    )
    assert flat.shape == (4, *shape) and flat.dtype == np.float32
    assert np.abs(flat[3] / s - 1).max() < 0.05
    # roles the plate lacks are not corrected
    assert (flat[1] == 1).all() and (flat[2] == 1).all()
    again = estimate_plate_flatfield(
        rows, sample_size=30, seed=1, reader=read_files_pixels, params=params
    )
    np.testing.assert_array_equal(flat, again)


# ----------------------------------------------------------------------------- QC


def test_qc_flags_blurred_empty_and_saturated_fields():
    px = 0.2
    base = synthetic_field((384, 384), pixel_size_um=px, density=0.006, seed=5)
    sharp = noisy(base, seed=1)
    blurred = noisy(ndimage.gaussian_filter(base, (0, 3.0 / px, 3.0 / px)), seed=2)
    empty = sharp.copy()
    empty[0] = noisy(np.full(base.shape[1:], 600.0), seed=3)
    saturated = sharp.copy()
    saturated[2] = np.clip(base[2] * 12, 0, 65535).astype(np.uint16)

    def qc(field):
        _, rec = prepare_field(field[:, None], channel_roles=list(ROLES), pixel_size_um=px)
        return rec

    good = qc(sharp)
    assert good["qc_pass"], good["qc_reasons"]
    assert good["qc_focus_nucleus"] > 0.2 and good["qc_snr_nucleus"] > 50
    b = qc(blurred)
    assert b["qc_blurred"] and not b["qc_pass"] and b["qc_reasons"] == "blurred"
    assert b["qc_focus_nucleus"] < DEFAULT_PARAMS["qc_focus_min"] < good["qc_focus_nucleus"]
    e = qc(empty)
    assert e["qc_empty"] and not e["qc_blurred"] and e["qc_reasons"] == "empty"
    assert e["qc_snr_nucleus"] < 3.5
    s = qc(saturated)
    assert s["qc_saturated"] and s["qc_reasons"] == "saturated"
    assert s["qc_saturated_er"] > 0.05 and s["qc_saturated_nucleus"] == 0
    # the focus score does not depend on brightness or on the number of cells
    dense = noisy(synthetic_field((384, 384), pixel_size_um=px, density=0.012, seed=6))
    f1 = focus_score(sharp[0], pixel_size_um=px)
    assert focus_score(sharp[0] // 4, pixel_size_um=px) == pytest.approx(f1, rel=0.05)
    assert 0.5 < focus_score(dense[0], pixel_size_um=px) / f1 < 2
    assert signal_to_noise(np.zeros((64, 64))) == 0.0


@pytest.mark.parametrize("factor", [2, 3, 5, 7, 8, 9, 16])
def test_block_mean_equals_numpy_reshape_mean_bit_for_bit(factor):
    rng = np.random.default_rng(factor)
    shape = (2, 7 * factor + factor // 2, 5 * factor + 1)  # remainders are cropped
    image = (rng.random(shape) * 1000).astype(np.float32)
    image[0, 0, 0] = np.nan
    ny, nx = shape[1] // factor, shape[2] // factor
    crop = image[:, : ny * factor, : nx * factor]
    want = crop.reshape(2, ny, factor, nx, factor).mean(axis=(-3, -1))
    got = block_mean(image, factor)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)  # NaN where numpy gives NaN
    ints = rng.integers(0, 65536, shape, dtype=np.uint16)
    want = ints[:, : ny * factor, : nx * factor].astype(np.float32)
    want = want.reshape(2, ny, factor, nx, factor).mean(axis=(-3, -1))
    np.testing.assert_array_equal(block_mean(ints, factor), want)


@pytest.mark.parametrize(
    ("shape", "sigma", "border", "tol"),
    [
        ((200, 150), 2.5, 0, 1e-9),
        ((200, 150), 2.5, 20, 1e-9),
        ((96, 80), 5.0, 10, 1e-9),
        ((40, 9), 1.3, 0, 1e-9),
        ((12, 7), 2.5, 1, 1e-5),  # smaller than the kernel: scipy itself, in float32
    ],
)
def test_focus_laplacian_equals_scipy(shape, sigma, border, tol):
    from locatlas.qc import _gaussian_laplace

    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(rng.random(shape), 2) * 5e4 + rng.random(shape)
    image = image.astype(np.float32)
    want = ndimage.gaussian_laplace(image.astype(np.float64), sigma, mode="reflect")
    want = want[border : shape[0] - border, border : shape[1] - border]
    got = _gaussian_laplace(image, sigma, border=border)
    assert got.shape == want.shape
    # equal up to an additive constant; the output is a small difference of large
    # sums, so compare to its own scale
    got, want = got - got.mean(), want - want.mean()
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * np.abs(want).max())


def test_focus_score_of_a_constant_plane_is_zero():
    # no structure at all: the energy ratio is 0/0, reported as 0 (not rounding noise)
    for value in (0, 100, 65535):
        assert focus_score(np.full((512, 512), value, np.uint16), pixel_size_um=0.2) == 0.0


@pytest.mark.parametrize(
    ("offset", "dtype"), [(0.0, np.uint16), (100.0, np.uint16), (3.0, np.uint8)]
)
def test_flatfield_in_row_blocks_equals_whole_image(offset, dtype):
    from locatlas.normalize import _flatfield_to_dtype, _to_dtype

    rng = np.random.default_rng(1)
    image = rng.integers(0, np.iinfo(dtype).max, (3, 2, 301, 517), endpoint=True).astype(dtype)
    flat = (0.5 + rng.random((3, 301, 517))).astype(np.float32)
    want = _to_dtype(apply_flatfield(image, flat, offset=offset), dtype)
    got = _flatfield_to_dtype(image, flat, offset=offset, dtype=np.dtype(dtype))
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------------------- shards


def test_normalize_shard_writes_hcs_with_quarantine_and_rerun(tmp_path):
    shape = (96, 128)
    fields = {
        (w, f, t): noisy(synthetic_field(shape, seed=10 * f + t), seed=t)
        for w, f, t in [("B02", 1, 0), ("B02", 1, 1), ("B02", 2, 0), ("C03", 1, 0)]
    }
    rows = make_rows(tmp_path, fields)
    # a corrupt file: B02 field 1 time point 1 goes to quarantine, its t=0 is written
    Path(json.loads(rows.loc[1, "source"])[2]).write_bytes(b"not a tiff")
    # no pixel size and no fallback: C03 goes to quarantine
    rows.loc[3, "pixel_size_um"] = np.nan
    flat = np.ones((4, *shape), np.float32)
    flat[0] = shading(shape)
    root = str(tmp_path / "zarr")
    receipt, quarantine = normalize_shard(
        rows, root, params={}, flatfields={"P1": flat}, reader=read_files_pixels
    )
    assert receipt["field_id"].tolist() == ["P1_B02_1_t000", "P1_B02_2_t000"]
    assert quarantine["field_id"].tolist() == ["P1_B02_1_t001", "P1_C03_1_t000"]
    assert set(quarantine["stage"]) == {"normalize"}
    assert "pixel size" in quarantine["reason"].iloc[1]
    assert quarantine["error_type"].tolist() == ["corrupt", "no-pixel-size"]
    assert quarantine.columns.tolist() == ["source", "field_id", "stage", "reason", "error_type"]
    r0 = receipt.iloc[0]
    assert (r0["size_t"], r0["size_c"], r0["size_y"], r0["size_x"]) == (2, 4, 96, 128)
    assert json.loads(r0["channel_roles"]) == list(ROLES)
    assert r0["flatfield"] and r0["pixel_size_um"] == 0.5 and r0["zarr_t"] == 0
    assert receipt["qc_pass"].dtype == bool
    image, meta = read_field_image(r0["zarr_path"])
    assert image.shape == (2, 4, 1, 96, 128)
    src = fields[("B02", 1, 0)]
    expected_nuc = src[0] / flat[0]  # float32 arithmetic may round the other way
    assert np.abs(image[0, 0, 0] - expected_nuc).max() <= 0.5 + 1e-3
    np.testing.assert_array_equal(image[0, 1:, 0], src[1:])
    assert not image[1].any()  # the quarantined time point reads as zeros
    attrs = meta["attrs"]
    assert attrs["missing_timepoints"] == [1]
    tp = attrs["timepoints"][0]
    assert tp["field_id"] == "P1_B02_1_t000" and len(tp["checksum"]) == 4
    assert all(len(v) == 64 for v in tp["checksum"].values())
    assert tp["reader"].endswith("read_files_pixels") and "qc_pass" in tp["qc"]
    assert attrs["flatfield_sha256"]

    # plate metadata from the receipts -> valid HCS with the written fields only
    write_plate_metadata(root, "P1", rows[rows["field_id"].isin(receipt["field_id"])])
    hcs = HCS.from_zarr(zarr.open_group(f"{root}/P1.ome.zarr", mode="r"))
    assert [w.path for w in hcs.ome_attributes.plate.wells] == ["B/2"]

    # rerun: identical tables (but timings) and identical chunks
    before = {
        p.relative_to(root): p.read_bytes()
        for p in Path(root).rglob("*")
        if p.is_file() and "/c/" in str(p)
    }
    receipt2, quarantine2 = normalize_shard(
        rows, root, params={}, flatfields={"P1": flat}, reader=read_files_pixels
    )
    timing = ["read_s", "process_s", "write_s"]
    pd.testing.assert_frame_equal(receipt.drop(columns=timing), receipt2.drop(columns=timing))
    pd.testing.assert_frame_equal(quarantine, quarantine2)
    after = {
        p.relative_to(root): p.read_bytes()
        for p in Path(root).rglob("*")
        if p.is_file() and "/c/" in str(p)
    }
    assert before == after and before

    # with a fallback pixel size C03 is written and marked
    receipt3, quarantine3 = normalize_shard(
        rows.iloc[3:],
        root,
        params={"pixel_size_um": 0.65},
        flatfields=None,
        reader=read_files_pixels,
    )
    assert quarantine3.empty and bool(receipt3["pixel_size_fallback"].iloc[0])
    assert receipt3["pixel_size_um"].iloc[0] == 0.65 and not receipt3["flatfield"].iloc[0]


def test_qc_failures_are_marked_not_dropped(tmp_path):
    shape = (128, 128)
    good = noisy(synthetic_field(shape, seed=1))
    empty = good.copy()
    empty[0] = noisy(np.full(shape, 500.0), seed=4)
    rows = make_rows(tmp_path, {("A01", 1, 0): good, ("A01", 2, 0): empty})
    receipt, quarantine = normalize_shard(
        rows,
        str(tmp_path / "z"),
        params={"flatfield": False},
        flatfields=None,
        reader=read_files_pixels,
    )
    assert quarantine.empty
    assert receipt["qc_pass"].tolist() == [True, False]
    assert receipt["qc_reasons"].tolist() == ["", "empty"]
    _, meta = read_field_image(receipt["zarr_path"].iloc[1])
    assert meta["attrs"]["timepoints"][0]["qc"]["qc_empty"] is True


def test_time_points_of_a_view_must_match(tmp_path):
    a = noisy(synthetic_field((64, 64), seed=1))
    b = noisy(synthetic_field((64, 80), seed=2))
    rows = make_rows(tmp_path, {("A01", 1, 0): a, ("A01", 1, 2): b})
    receipt, quarantine = normalize_shard(
        rows, str(tmp_path / "z"), params={"flatfield": False}, reader=read_files_pixels
    )
    assert receipt["field_id"].tolist() == ["P1_A01_1_t000"]
    assert receipt["size_t"].tolist() == [3]  # t = timepoint; t=1 was never in the manifest
    assert quarantine["error_type"].tolist() == ["shape-mismatch"]
    _, meta = read_field_image(receipt["zarr_path"].iloc[0])
    assert meta["attrs"]["missing_timepoints"] == [1, 2]
    dup = pd.concat([rows.iloc[:1], rows.iloc[:1]], ignore_index=True)
    receipt, quarantine = normalize_shard(
        dup, str(tmp_path / "z2"), params={"flatfield": False}, reader=read_files_pixels
    )
    assert receipt.empty and quarantine["error_type"].tolist() == ["duplicate-id"] * 2


def test_params_are_documented():
    assert set(DEFAULT_PARAMS) == set(PARAM_DOCS)


# ----------------------------------------------------------------------------- real data


def _hpa_reader(row):
    """HPA v18 JPEGs are RGB tinted with the channel colour: R for red and yellow,
    G for green, B for blue."""
    import imagecodecs

    planes = []
    for path in json.loads(row["source"]):
        colour = path.rsplit("_", 1)[1].split(".")[0]
        rgb = imagecodecs.imread(path)
        planes.append(rgb[..., {"red": 0, "yellow": 0, "green": 1, "blue": 2}[colour]])
    return np.stack(planes)[:, None]


def test_real_hpa_fields_normalize_and_pass_qc(tmp_path):
    folder = DATA / "hpa_fields" / "hpa_v18"
    if not folder.is_dir():
        pytest.skip(f"real data not found at {folder} (../shared/data is absent)")
    colours = ["green", "red", "blue", "yellow"]
    roles = ["protein", "microtubules", "nucleus", "er"]
    rows = []
    for i, fid in enumerate(["89_B5_1", "800_A6_1"]):
        rows.append(
            {
                "field_id": make_field_id("HPA", "A01", i + 1, 0),
                "view_id": make_view_id("HPA", "A01", i + 1),
                "plate": "HPA",
                "well": "A01",
                "field": i + 1,
                "timepoint": 0,
                "source": json.dumps([str(folder / f"{fid}_{c}.jpg") for c in colours]),
                "format": "jpeg",
                "channel_roles": json.dumps(roles),
                "pixel_size_um": 0.08,
                "z_step_um": None,
            }
        )
    rows = pd.DataFrame(rows)
    receipt, quarantine = normalize_shard(
        rows,
        str(tmp_path / "z"),
        params={"flatfield": False},
        flatfields=None,
        reader=_hpa_reader,
    )
    assert quarantine.empty
    assert receipt["qc_pass"].all(), receipt[["field_id", "qc_reasons"]]
    assert receipt[["size_y", "size_x"]].values.tolist() == [[1728, 1728], [2048, 2048]]
    image, meta = read_field_image(receipt["zarr_path"].iloc[0])
    assert meta["channel_roles"] == list(ROLES) and meta["n_levels"] == 3
    raw = _hpa_reader(rows.iloc[0])
    np.testing.assert_array_equal(image[0, 0, 0], raw[2, 0].astype(np.uint16) * 257)
    np.testing.assert_array_equal(image[0, 3, 0], raw[0, 0].astype(np.uint16) * 257)
