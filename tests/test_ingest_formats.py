"""Ingest of real vendor files and HPA fields from ../shared/data (skipped without it).

Ground truth: ../shared/data/README.md (sizes, pixel sizes), independent readers
(readlif, nd2, tifffile, mrc) for pixel values, and the HPA labels table.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from locatlas.ingest import build_manifest, read_field_pixels

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FORMATS = DATA / "formats"
HPA = DATA / "hpa_fields"

pytestmark = [
    pytest.mark.skipif(
        not FORMATS.is_dir(),
        reason=f"real data not available: {DATA} is missing (CI has it; see shared/data/README.md)",
    ),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


@pytest.fixture(scope="module")
def formats_manifest():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_manifest(FORMATS)


def _rows(manifest: pd.DataFrame, name: str) -> pd.DataFrame:
    return manifest[manifest["source"].map(lambda s: Path(s).name == name)]


def _one(manifest: pd.DataFrame, name: str, **match) -> pd.Series:
    rows = _rows(manifest, name)
    for k, v in match.items():
        rows = rows[rows[k] == v]
    assert len(rows) == 1, f"{name} {match}: {len(rows)} rows"
    return rows.iloc[0]


def test_every_file_in_formats_is_ingested_and_read(formats_manifest):
    manifest, quarantine = formats_manifest
    assert quarantine.empty, quarantine.to_string()
    files = sorted(p.name for p in FORMATS.rglob("*") if p.is_file())
    assert sorted({Path(s).name for s in manifest["source"]}) == files
    for _, row in manifest.drop_duplicates("view_id").iterrows():
        arr = read_field_pixels(row)
        assert arr.shape == (row.size_c, row.size_z, row.size_y, row.size_x), row.field_id
        assert arr.dtype == np.dtype(row["dtype"])
        assert len(json.loads(row.channel_roles)) == row.size_c
    assert manifest["field_id"].is_unique
    assert (manifest.groupby("view_id")["shard"].nunique() == 1).all()


def test_ome_tiff_and_czi_of_the_same_field_are_identical(formats_manifest):
    manifest, _ = formats_manifest
    czi = _one(manifest, "s_1_t_1_c_1_z_1.czi")
    ome = _one(manifest, "s_1_t_1_c_1_z_1.ome.tiff")
    assert (czi.format, ome.format) == ("czi", "ome-tiff")
    a, b = read_field_pixels(czi), read_field_pixels(ome)
    assert a.shape == (1, 1, 325, 475) and a.dtype == np.uint16
    np.testing.assert_array_equal(a, b)
    assert a.std() > 0
    assert czi.pixel_size_um == pytest.approx(ome.pixel_size_um, rel=1e-9)
    assert czi.pixel_size_um == pytest.approx(1.083, abs=1e-3)
    assert czi.pixel_size_source == ome.pixel_size_source == "metadata"
    assert json.loads(czi.channel_names) == json.loads(ome.channel_names) == ["Bright"]
    assert json.loads(czi.channel_roles) == [""]  # brightfield is deliberately unmapped


def test_lif_planes_equal_expected_tifs():
    """The tifs are planes c{c}z{z}t{t} exported by readlif's authors from their
    xyzt example LIF (1024², 2 channels, z=3, t=3). Compare with any LIF here that has
    such a scene; skip (naming the missing file) if none has."""
    import tifffile

    expected = sorted((FORMATS / "lif_expected_tifs").glob("c*z*t*.tif"))
    assert expected, "lif_expected_tifs/ is empty"
    ref = {p.stem: tifffile.imread(p) for p in expected}
    shape = next(iter(ref.values())).shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        manifest, _ = build_manifest(FORMATS, pattern="*.lif")
    need = {
        k: tuple(int(x) for x in k[1:].replace("z", " ").replace("t", " ").split()) for k in ref
    }
    candidates = manifest[
        (manifest.size_y == shape[0])
        & (manifest.size_x == shape[1])
        & (manifest.size_c > max(c for c, _, _ in need.values()))
        & (manifest.size_z > max(z for _, z, _ in need.values()))
    ]
    if candidates.empty:
        pytest.skip(
            "the LIF that lif_expected_tifs/ was exported from (readlif tests "
            f"xyzt-example.lif: {shape[0]}x{shape[1]}, 2 channels, z=3, t=3) is not in "
            f"{FORMATS}; no LIF scene there has that size (the LIF reader is checked "
            "plane by plane against readlif in test_lif_matches_readlif)"
        )
    for _, grp in candidates.groupby("view_id"):
        ok = True
        for key, (c, z, t) in need.items():
            row = grp[grp.timepoint == t]
            if row.empty:
                ok = False
                break
            ok &= np.array_equal(read_field_pixels(row.iloc[0])[c, z], ref[key])
        if ok:
            return
    pytest.fail(f"no LIF scene of size {shape} reproduces the expected planes")


def test_lif_matches_readlif(formats_manifest):
    """Every plane of every LIF scene (bioio-lif, or liffile for line scans) equals
    readlif's, an independent LIF parser; the mosaic is stitched from readlif's tiles."""
    from readlif.reader import LifFile

    manifest, _ = formats_manifest
    lif_rows = manifest[manifest.format == "lif"]
    checked = 0
    for name in sorted({Path(s).name for s in lif_rows.source}):
        lif = LifFile(str(FORMATS / name))
        for _, row in _rows(lif_rows, name).iterrows():
            if json.loads(row.channel_names)[0].startswith("lambda"):
                continue  # spectral scans: readlif cannot read them (NotImplementedError)
            im = lif.get_image(int(row.scene))
            arr = read_field_pixels(row)
            t = int(row.t_index)
            dims = im.dims_n
            for c in range(int(row.size_c)):
                if 2 not in dims:  # x-z(-t) line scan: one (Z, X) plane per t
                    plane = np.asarray(im.get_plane(c=c, requested_dims={4: t}))
                    np.testing.assert_array_equal(arr[c, :, 0, :], plane)
                    checked += 1
                elif list(dims)[:2] == [1, 3]:  # x-z frames stacked along y
                    for y in range(int(row.size_y)):
                        plane = np.asarray(im.get_plane(c=c, requested_dims={2: y}))
                        np.testing.assert_array_equal(arr[c, :, y, :], plane)
                        checked += 1
                elif im.dims.m > 1:  # mosaic: every tile appears in the stitched plane
                    th, tw = im.dims.y, im.dims.x
                    assert arr.shape[-2:] == (2 * th - 1, 2 * tw - 1)  # 2x2 tiles, 1 px overlap
                    corners = [(0, 0), (0, tw - 1), (th - 1, 0), (th - 1, tw - 1)]
                    for z in range(int(row.size_z)):
                        for m in range(im.dims.m):
                            tile = np.asarray(im.get_frame(z=z, t=t, c=c, m=m))
                            inner = tile[1:-1, 1:-1]
                            assert any(
                                np.array_equal(
                                    arr[c, z, y + 1 : y + th - 1, x + 1 : x + tw - 1], inner
                                )
                                for y, x in corners
                            ), f"{name} tile {m} z{z} c{c} t{t} not in the stitched plane"
                            checked += 1
                else:
                    for z in range(int(row.size_z)):
                        plane = np.asarray(im.get_frame(z=z, t=t, c=c))
                        np.testing.assert_array_equal(arr[c, z], plane)
                        checked += 1
    assert checked > 100


def test_lif_sizes(formats_manifest):
    manifest, _ = formats_manifest
    tile = _one(manifest, "PR2729_frameOrderCombinedScanTypes.lif", t_index=1)
    assert (tile.size_c, tile.size_z, tile.size_y, tile.size_x) == (2, 3, 127, 127)
    assert json.loads(tile.channel_roles) == ["protein", "microtubules"]  # Green, Red
    assert tile.pixel_size_um == pytest.approx(1 / 0.252, rel=1e-4)  # readlif: 0.252 px/µm
    sweep = _rows(manifest, "LeicaLASX_wavelength-sweep_example.lif")
    assert sorted(sweep.size_c.unique()) == [10, 15, 20]  # lambda bins become channels
    assert (sweep.reader == "liffile").all()
    xz = _one(manifest, "xz-example.lif", scene=2)
    assert (xz.size_c, xz.size_z, xz.size_y, xz.size_x) == (2, 512, 1, 512)
    assert len(_rows(manifest, "xz-example.lif").query("scene == 0")) == 20  # xzt: 20 time points


def test_nd2(formats_manifest):
    import nd2

    manifest, _ = formats_manifest
    rows = _rows(manifest, "cluster.nd2").sort_values("timepoint")
    assert list(rows.timepoint) == [0, 1, 2]
    assert rows.view_id.nunique() == 1 and rows.shard.nunique() == 1
    first = rows.iloc[0]
    assert (first.size_c, first.size_z, first.size_y, first.size_x) == (2, 10, 31, 38)
    with nd2.ND2File(FORMATS / "cluster.nd2") as f:
        ref = f.asarray()  # (T, Z, C, Y, X)
        vs = f.voxel_size()
    assert first.pixel_size_um == pytest.approx(vs.x, rel=1e-6)
    assert first.z_step_um == pytest.approx(vs.z, rel=1e-6)
    for _, row in rows.iterrows():
        np.testing.assert_array_equal(
            read_field_pixels(row), ref[row.t_index].transpose(1, 0, 2, 3)
        )


def test_deltavision(formats_manifest):
    import mrc

    manifest, _ = formats_manifest
    row = _one(manifest, "toxo.dv")
    assert (row.size_c, row.size_z, row.size_y, row.size_x) == (2, 17, 128, 128)
    assert row.pixel_size_um == pytest.approx(0.1326, abs=5e-4)
    assert row.z_step_um == pytest.approx(0.3, abs=1e-6)
    assert json.loads(row.channel_names) == ["525 nm", "632 nm"]
    arr = read_field_pixels(row)
    ref = mrc.imread(str(FORMATS / "toxo.dv"))  # (C, Z, Y, X) squeezed
    np.testing.assert_array_equal(arr, np.asarray(ref).reshape(arr.shape))


def test_lsm(formats_manifest):
    import tifffile

    manifest, _ = formats_manifest
    row = _one(manifest, "test.lsm")
    assert (row.size_c, row.size_z, row.size_y, row.size_x, row["dtype"]) == (
        1,
        1,
        512,
        512,
        "uint16",
    )
    assert row.pixel_size_um == pytest.approx(0.69, abs=5e-3)
    assert row.reader == "tifffile"
    # the dye (Alexa Fluor 568) maps the channel by wavelength
    assert json.loads(row.channel_roles) == ["microtubules"]
    with tifffile.TiffFile(FORMATS / "test.lsm") as tif:
        ref = tif.series[0].asarray()
    np.testing.assert_array_equal(read_field_pixels(row)[0, 0], ref)


# --------------------------------------------------------------------------- HPA fields


def _hpa_sheet(tmp_path: Path) -> Path:
    """A sample sheet for the HPA fields, built from labels.csv and samplescopy.csv."""
    with open(HPA / "labels.csv", newline="") as fh:
        labels = list(csv.DictReader(fh))
    rows = []
    for rec in labels:
        prefix = rec["field_prefix"]
        if (HPA / "hpa_v18" / f"{prefix}_blue.jpg").exists():
            rows.append(
                {
                    "source": str(HPA / "hpa_v18" / prefix),
                    "format": "hpa",
                    "protein": rec["gene_symbol_inferred_from_ensembl"],
                    "labels": rec["target_indices_kaggle2018"],
                    "cell_line": "",
                }
            )
    cm4ai = next(r for r in labels if r["field_prefix"].startswith("B2AI"))
    with open(HPA / "cm4ai" / "samplescopy.csv", newline="") as fh:
        for rec in csv.DictReader(fh):
            stem = HPA / "cm4ai" / rec["filename"]  # trailing "_" as in the table
            if any((HPA / "cm4ai" / "blue").glob(f"{rec['filename']}blue.*")):
                rows.append(
                    {
                        "source": str(stem),
                        "format": "hpa",
                        "plate": rec["if_plate_id"],
                        "well": rec["position"],
                        "field": rec["sample"].lstrip("R"),
                        "protein": cm4ai["gene_symbol_inferred_from_ensembl"],
                        "cell_line": cm4ai["cell_line"],
                        "labels": "",
                    }
                )
    sheet = tmp_path / "hpa.csv"
    pd.DataFrame(rows).to_csv(sheet, index=False)
    return sheet


@pytest.fixture(scope="module")
def hpa_manifest(tmp_path_factory):
    if not HPA.is_dir():
        pytest.skip(f"{HPA} missing")
    sheet = _hpa_sheet(tmp_path_factory.mktemp("hpa"))
    return build_manifest(sheet, pixel_size_um=0.08)


def test_hpa_fields_ids_labels_roles(hpa_manifest):
    manifest, quarantine = hpa_manifest
    assert quarantine.empty, quarantine.to_string()
    assert len(manifest) == 6
    by_id = manifest.set_index("field_id")
    assert by_id.loc["89_B05_1_t000", "labels"] == "6"  # Endoplasmic reticulum
    assert by_id.loc["800_A06_1_t000", "labels"] == "25"  # Cytosol
    assert by_id.loc["89_B05_1_t000", "protein"] == "STIM1"
    cm = manifest[manifest.plate == "B2AI-1-untreated"]
    assert sorted(cm.field_id) == [f"B2AI-1-untreated_A01_{k}_t000" for k in (1, 2, 3, 4)]
    assert set(cm.protein) == {"PARP1"} and set(cm.cell_line) == {"MDA-MB-468"}
    assert set(cm.labels) == {""}
    for _, row in manifest.iterrows():
        assert json.loads(row.channel_roles) == ["nucleus", "microtubules", "er", "protein"]
        colours = [Path(p).stem.rsplit("_", 1)[1] for p in json.loads(row.source)]
        assert colours == ["blue", "red", "yellow", "green"]
        assert row.pixel_size_source == "config-fallback"
    assert set(manifest.loc[manifest.plate == "89", "size_y"]) == {1728}
    assert set(manifest.loc[manifest.plate == "800", "size_y"]) == {2048}


def test_hpa_colour_component_and_nucleus_channel(hpa_manifest):
    """Each tinted JPEG gives its own colour component, and the channel labelled nucleus
    is bright inside nuclei while the microtubule channel is not."""
    import imagecodecs
    from scipy import ndimage
    from skimage.filters import threshold_otsu
    from skimage.measure import label, regionprops

    manifest, _ = hpa_manifest
    for _, row in manifest.iterrows():
        arr = read_field_pixels(row)[:, 0].astype(np.float32)
        roles = json.loads(row.channel_roles)
        for path, plane in zip(json.loads(row.source), arr, strict=True):
            rgb = imagecodecs.jpeg8_decode(Path(path).read_bytes())
            colour = Path(path).stem.rsplit("_", 1)[1]
            means = rgb.reshape(-1, 3).mean(0)
            if rgb.ndim == 3:
                # the tint: the chosen component carries the signal
                comp = {"red": 0, "yellow": 0, "green": 1, "blue": 2}[colour]
                if colour == "yellow":  # yellow = red + green: R and G carry it, B does not
                    assert means[0] > 0.8 * means.max() and means[2] < 0.5 * means[0], means
                else:
                    assert means[comp] == means.max(), (path, means)
                np.testing.assert_array_equal(plane, rgb[:, :, comp])
        small = arr[:, ::4, ::4]  # 4x subsampled: enough for nuclei, 16x less work

        def mask_stats(channel):
            """Otsu mask of a channel: the mask, median solidity of its objects, and the
            fraction of object area in objects with holes."""
            sm = ndimage.gaussian_filter(channel, 1)
            mask = ndimage.binary_opening(sm > threshold_otsu(sm), iterations=1)
            props = [p for p in regionprops(label(mask)) if p.area > 50]
            solidity = float(np.median([p.solidity for p in props]))
            holes = sum(p.area for p in props if p.euler_number < 1) / sum(p.area for p in props)
            return mask, solidity, holes, len(props)

        nuc = small[roles.index("nucleus")]
        mt = small[roles.index("microtubules")]
        er = small[roles.index("er")]
        mask, sol_nuc, holes_nuc, n_nuclei = mask_stats(nuc)
        _, sol_mt, holes_mt, _ = mask_stats(mt)
        _, sol_er, _, _ = mask_stats(er)
        assert 0.02 < mask.mean() < 0.6, (row.field_id, mask.mean())
        assert 5 <= n_nuclei <= 500, (row.field_id, n_nuclei)
        # nuclei are compact blobs; tubulin and ER fill the cytoplasm around them
        assert sol_nuc > 0.85 and sol_nuc > max(sol_mt, sol_er) + 0.04, (sol_nuc, sol_mt, sol_er)
        assert holes_mt > holes_nuc + 0.1, (row.field_id, holes_mt, holes_nuc)

        def contrast(channel, mask=mask):
            return channel[mask].mean() / max(channel[~mask].mean(), 1e-3)

        c_nuc, c_mt = contrast(nuc), contrast(mt)
        assert c_nuc > 3, (row.field_id, c_nuc)
        assert c_nuc > 2 * c_mt, (row.field_id, c_nuc, c_mt)


def test_hpa_directory_ingest_groups_stems(tmp_path):
    """Directory mode finds the same six fields (per-colour folders included)."""
    if not HPA.is_dir():
        pytest.skip(f"{HPA} missing")
    manifest, quarantine = build_manifest(HPA, pixel_size_um=0.08)
    assert quarantine.empty, quarantine.to_string()
    assert sorted(manifest.field_id) == sorted(
        ["89_B05_1_t000", "800_A06_1_t000"]
        + [f"B2AI-1-untreated_A01_{k}_t000" for k in (1, 2, 3, 4)]
    )
