"""The simulator: determinism, truth consistency, patterns, cell cycle, time-lapse, files."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from locatlas import ROLES
from locatlas.ids import make_field_id
from locatlas.simulate import PRESETS, ProteinSpec, SimulatedField, simulate_field, write_atlas
from locatlas.simulate.camera import CAMERA

OFFSET = CAMERA["offset_adu"]
GAIN = CAMERA["gain_adu_per_e"]


def _field(labels, *, seed=11, shape=(384, 384), **kw) -> SimulatedField:
    return simulate_field(ProteinSpec(f"T{seed}", labels=labels, **kw), shape=shape, seed=seed)


def _signal(f: SimulatedField, channel: int = 3) -> np.ndarray:
    """Background-subtracted signal (ADU): image minus offset minus the median of
    the background pixels (no cell)."""
    img = f.image[channel].astype(np.float64) - OFFSET
    bg = np.median(img[f.cells == 0]) if np.any(f.cells == 0) else 0.0
    return img - bg


# --- determinism ----------------------------------------------------------------
def test_same_seed_same_field_different_seed_different():
    p = ProteinSpec("DET", labels=(0, 25))
    a = simulate_field(p, shape=(256, 320), seed=5)
    b = simulate_field(p, shape=(256, 320), seed=5)
    c = simulate_field(p, shape=(256, 320), seed=6)
    assert a.image.shape == (4, 256, 320) and a.image.dtype == np.uint16
    assert a.nuclei.dtype == np.int32 and a.cells.dtype == np.int32
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.cells, b.cells)
    np.testing.assert_array_equal(a.nuclei, b.nuclei)
    pd.testing.assert_frame_equal(a.cells_table, b.cells_table)
    assert not np.array_equal(a.cells, c.cells)
    assert not np.array_equal(a.image, c.image)


# --- masks ------------------------------------------------------------------------
def test_masks_consistent_and_cells_touch():
    f = _field((25,), seed=3, shape=(512, 512))
    nuc, cells = f.nuclei, f.cells
    inside = nuc > 0
    # Every nucleus lies in its own cell; the ids match one to one.
    np.testing.assert_array_equal(cells[inside], nuc[inside])
    ids = set(np.unique(cells)) - {0}
    assert ids == set(np.unique(nuc)) - {0}
    assert ids == set(f.cells_table["cell_id"])
    assert len(ids) >= 8
    for i, sl in enumerate(ndimage.find_objects(cells), start=1):
        if sl is None:
            continue
        assert ndimage.label(cells[sl] == i)[1] == 1, f"cell {i} is in pieces"
    # Touching cells: neighbouring pixels of two different cells.
    h = (cells[:, 1:] != cells[:, :-1]) & (cells[:, 1:] > 0) & (cells[:, :-1] > 0)
    v = (cells[1:, :] != cells[:-1, :]) & (cells[1:, :] > 0) & (cells[:-1, :] > 0)
    assert h.sum() + v.sum() > 100
    # ... and some background between colonies.
    assert 0.01 < np.mean(cells == 0) < 0.6
    # Sizes in µm as specified: nuclei 8-14 µm across, cells 20-40 µm (median).
    t = f.cells_table[~f.cells_table["touches_border"]]
    ps = f.pixel_size_um
    nuc_d = 2 * np.sqrt(t["nucleus_area_px"] / np.pi) * ps
    cell_d = 2 * np.sqrt(t["area_px"] / np.pi) * ps
    assert 8 <= nuc_d.median() <= 14
    assert 18 <= cell_d.median() <= 42


def test_pixel_size_changes_pixels_not_biology():
    coarse = simulate_field(ProteinSpec("PS", labels=(0,)), shape=(256, 256), pixel_size_um=0.4)
    fine = simulate_field(ProteinSpec("PS", labels=(0,)), shape=(512, 512), pixel_size_um=0.2)
    a = coarse.cells_table["nucleus_area_px"].median() * 0.4**2
    b = fine.cells_table["nucleus_area_px"].median() * 0.2**2
    assert 0.6 < a / b < 1.6


# --- cell cycle -------------------------------------------------------------------
def test_integrated_dapi_follows_dna_content():
    f = _field((25,), seed=21, shape=(768, 768))
    dapi = _signal(f, 0)
    n = f.nuclei.max() + 1
    integ = np.bincount(f.nuclei.ravel(), weights=dapi.ravel(), minlength=n)
    t = f.cells_table[~f.cells_table["touches_border"]]
    assert len(t) >= 10
    assert set(f.cells_table["cycle_phase"]) <= {"G1", "S", "G2"}
    assert f.cells_table["dna_content"].between(2.0, 4.0).all()
    r = np.corrcoef(integ[t["cell_id"]], t["dna_content"])[0, 1]
    assert r > 0.8, r
    # Nuclear area grows with DNA content too (in interphase; mitotic chromatin is compact).
    inter = t[~t["mitotic"]]
    assert np.corrcoef(inter["nucleus_area_px"], inter["dna_content"])[0, 1] > 0.4


def test_cell_cycle_level_protein_rises_threefold():
    spec = ProteinSpec("CCL", labels=(0,), cycle_effect="level", cycle_fold=3.0)
    g1, g2, lv = [], [], []
    for seed in (1, 2, 3):
        f = simulate_field(spec, shape=(512, 512), seed=seed)
        sig = _signal(f)
        n = f.nuclei.max() + 1
        mean = np.bincount(f.nuclei.ravel(), weights=sig.ravel(), minlength=n) / np.maximum(
            np.bincount(f.nuclei.ravel(), minlength=n), 1
        )
        t = f.cells_table
        g1 += list(mean[t.loc[t["cycle_phase"] == "G1", "cell_id"]])
        g2 += list(mean[t.loc[t["cycle_phase"] == "G2", "cell_id"]])
        lv += list(t.groupby("cycle_phase")["protein_level"].median().reindex(["G1", "G2"]))
    ratio = np.median(g2) / np.median(g1)
    assert 2.0 < ratio < 4.0, ratio


def test_cell_cycle_pattern_protein_gains_location_late():
    spec = ProteinSpec("CCP", labels=(25,), cycle_effect="pattern", cycle_label=19)
    f = simulate_field(spec, shape=(512, 512), seed=4)
    t = f.cells_table
    late = t["dna_content"] > 3.0
    assert late.any() and (~late).any()
    assert (t.loc[late, "labels"] == "19;25").all()
    assert (t.loc[~late, "labels"] == "25").all()


def test_variable_proteins_vary_more():
    steady = simulate_field(ProteinSpec("ST", labels=(25,)), shape=(512, 512), seed=8)
    var = simulate_field(
        ProteinSpec("VA", labels=(25,), variability="intensity", variable_sigma=0.8),
        shape=(512, 512),
        seed=8,
    )
    cv_s = np.std(np.log(steady.cells_table["protein_level"]))
    cv_v = np.std(np.log(var.cells_table["protein_level"]))
    assert cv_v > 2.5 * cv_s
    # The measured per-cell intensity follows the truth level.
    sig = _signal(var)
    n = var.cells.max() + 1
    integ = np.bincount(var.cells.ravel(), weights=sig.ravel(), minlength=n)
    t = var.cells_table[~var.cells_table["touches_border"]]
    area = t["area_px"].to_numpy()
    r = np.corrcoef(np.log(np.maximum(integ[t["cell_id"]] / area, 1)), np.log(t["protein_level"]))
    assert r[0, 1] > 0.8


def test_spatially_variable_protein_subset_shows_extra_location():
    spec = ProteinSpec(
        "SV", labels=(25,), variability="spatial", spatial_label=0, spatial_fraction=0.5
    )
    f = simulate_field(spec, shape=(512, 512), seed=9)
    t = f.cells_table.set_index("cell_id")
    extra = t["labels"] == "0;25"
    assert 0.15 < extra.mean() < 0.85
    sig = _signal(f)
    n = f.nuclei.max() + 1
    nuc_mean = np.bincount(f.nuclei.ravel(), weights=sig.ravel(), minlength=n) / np.maximum(
        np.bincount(f.nuclei.ravel(), minlength=n), 1
    )
    per_level = nuc_mean[t.index] / t["protein_level"]
    assert per_level[extra].median() > 3 * per_level[~extra].median()


# --- protein patterns ---------------------------------------------------------------
def _features(f: SimulatedField) -> dict[str, float]:
    """Simple location statistics of the protein signal of one field (sums of the
    background-subtracted signal, so that noise averages out)."""
    s = _signal(f)
    cells = f.cells
    incell = cells > 0
    total = s[incell].sum()
    nuc = f.nuclei > 0
    rim = np.zeros_like(nuc)
    rim[1:, :] |= cells[1:, :] != cells[:-1, :]
    rim[:-1, :] |= cells[:-1, :] != cells[1:, :]
    rim[:, 1:] |= cells[:, 1:] != cells[:, :-1]
    rim[:, :-1] |= cells[:, :-1] != cells[:, 1:]
    rim = ndimage.binary_dilation(rim & incell, iterations=3) & incell & ~nuc
    ring = ndimage.binary_dilation(nuc, iterations=3) & ~ndimage.binary_erosion(nuc, iterations=3)
    cyto = incell & ~nuc
    near = ndimage.binary_dilation(nuc, iterations=int(4 / f.pixel_size_um)) & cyto
    hi, mid = np.percentile(s[incell], [99.9, 50])
    mt = _signal(f, 1)[cyto]
    er = _signal(f, 2)[cyto]
    return {
        "nuclear": s[nuc].sum() / total,
        "rim": s[rim].sum() / total,
        "ring": s[ring].sum() / total,
        "perinuclear": s[near].sum() / s[cyto].sum(),
        "contrast": float(np.log10(max(hi, 1) / max(mid, 1))),
        "corr_mt": float(np.corrcoef(s[cyto], mt)[0, 1]),
        "corr_er": float(np.corrcoef(s[cyto], er)[0, 1]),
    }


CORE = (0, 1, 2, 4, 6, 7, 12, 14, 19, 21, 23, 25, 26)


@pytest.fixture(scope="module")
def class_fields() -> dict[int, SimulatedField]:
    return {c: _field((c,), seed=31, shape=(448, 448)) for c in CORE}


@pytest.fixture(scope="module")
def class_features(class_fields) -> dict[int, dict[str, float]]:
    return {c: _features(f) for c, f in class_fields.items()}


@pytest.mark.parametrize("cls", [0, 2, 4])
def test_nuclear_classes_are_in_the_nucleus(class_features, cls):
    assert class_features[cls]["nuclear"] > 0.8, class_features[cls]


def test_nuclear_membrane_is_the_nuclear_rim(class_fields, class_features):
    f = class_fields[1]
    s = _signal(f)
    grown = ndimage.binary_dilation(f.nuclei > 0, iterations=int(round(0.6 / f.pixel_size_um)))
    assert s[grown].sum() / s[f.cells > 0].sum() > 0.8
    assert class_features[1]["ring"] > 0.7


@pytest.mark.parametrize("cls", [6, 7, 12, 14, 19, 21, 23, 25, 26])
def test_cytoplasmic_classes_are_outside_the_nucleus(class_features, cls):
    assert class_features[cls]["nuclear"] < 0.35, class_features[cls]


def test_class_specific_signatures(class_fields, class_features):
    f = class_features
    # Nuclear membrane: the nuclear rim; nucleoplasm: the whole nucleus.
    assert f[1]["ring"] > 0.7 and f[0]["ring"] < 0.5
    # Plasma membrane at the cell rim, much more than cytosol.
    assert f[21]["rim"] > 2.5 * f[25]["rim"] and f[21]["rim"] > 0.35
    # Reference-correlated patterns.
    assert f[14]["corr_mt"] > 0.7 and f[25]["corr_mt"] < 0.6
    assert f[6]["corr_er"] > 0.7 and f[23]["corr_er"] < f[6]["corr_er"] - 0.2
    # Compact, punctate or perinuclear patterns.
    assert f[19]["contrast"] > 1.2  # centrosome: a few bright dots on a dim cytoplasm
    assert f[26]["contrast"] > 1.0  # cytoplasmic bodies
    assert f[7]["perinuclear"] > 0.75  # Golgi next to the nucleus
    assert f[25]["contrast"] < 0.5  # cytosol: diffuse
    # Nucleoli: signal in the DAPI-dark nucleoli; speckles and nucleoplasm avoid them.
    for cls, lo, hi in ((2, 3.0, None), (4, None, 0.6), (0, None, 0.4)):
        fl = class_fields[cls]
        s = _signal(fl)
        nucleoli = _nucleoli_mask(fl)
        ratio = s[nucleoli].mean() / s[(fl.nuclei > 0) & ~nucleoli].mean()
        assert (lo is None or ratio > lo) and (hi is None or ratio < hi), (cls, ratio)


def _nucleoli_mask(f: SimulatedField) -> np.ndarray:
    assert f.nucleoli is not None and not np.any(f.nucleoli & (f.nuclei == 0))
    return f.nucleoli


def test_classes_are_statistically_distinct(class_features):
    keys = sorted(next(iter(class_features.values())))
    vec = {c: np.array([class_features[c][k] for k in keys]) for c in CORE}
    for a in CORE:
        for b in CORE:
            if a < b:
                assert np.abs(vec[a] - vec[b]).max() > 0.08, (a, b, vec[a], vec[b])


def test_multilabel_protein_shows_the_union():
    f = _field((0, 25), seed=12, shape=(448, 448), weights=(1.0, 1.0))
    assert set(f.cells_table["labels"]) == {"0;25"}
    feats = _features(f)
    assert 0.15 < feats["nuclear"] < 0.85


# --- time-lapse ---------------------------------------------------------------------
def test_translocation_appears_at_the_onset_frame():
    spec = ProteinSpec("TL", labels=(25,), translocation_from=25, translocation_to=0, onset_frame=3)
    frames = [
        simulate_field(spec, shape=(384, 384), seed=44, timepoint=t, n_timepoints=5)
        for t in range(5)
    ]
    nuclear, total = [], []
    for f in frames:
        s = _signal(f)
        nuc = f.nuclei > 0
        cyto = (f.cells > 0) & ~nuc
        nuclear.append(s[nuc].mean() / s[cyto].mean())  # nuclear / cytoplasmic ratio
        total.append(s[f.cells > 0].sum())
    assert max(nuclear[:3]) < 0.3, nuclear
    assert min(nuclear[3:]) > 3.0, nuclear
    # The protein moves, it is not made or destroyed.
    assert max(total) / min(total) < 1.3, total
    assert set(frames[2].cells_table["labels"]) == {"25"}
    assert set(frames[3].cells_table["labels"]) == {"0"}
    # Cells keep their identity and move a little between frames.
    a = frames[0].cells_table.set_index("cell_id")
    b = frames[1].cells_table.set_index("cell_id")
    common = a.index.intersection(b.index)
    assert len(common) >= 0.9 * len(a)
    shift = np.hypot(
        a.loc[common, "centroid_y"] - b.loc[common, "centroid_y"],
        a.loc[common, "centroid_x"] - b.loc[common, "centroid_x"],
    )
    assert 0 < np.median(shift) * frames[0].pixel_size_um < 3.0
    np.testing.assert_allclose(a.loc[common, "dna_content"], b.loc[common, "dna_content"])


# --- noise ----------------------------------------------------------------------------
def test_noise_variance_grows_with_signal():
    f = _field((25,), seed=5, shape=(512, 512))
    lam = f.expected[3].ravel()
    adu = f.image[3].ravel().astype(np.float64)
    edges = np.quantile(lam, [0.02, 0.1, 0.3, 0.6, 0.9, 0.99])
    var_ratio = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (lam >= lo) & (lam < hi)
        resid = adu[m] - (OFFSET + GAIN * lam[m])
        expected_var = GAIN**2 * (lam[m].mean() + CAMERA["read_noise_e"] ** 2)
        var_ratio.append(resid.var() / expected_var)
    assert all(0.7 < r < 1.5 for r in var_ratio), var_ratio
    # Camera offset: the darkest pixels sit near the offset, never at zero.
    assert f.image.min() > 50 and np.median(f.image[:, f.cells == 0]) > OFFSET


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="1-3 locations"):
        ProteinSpec("B", labels=())
    with pytest.raises(ValueError, match="cannot be simulated"):
        ProteinSpec("B", labels=(16,))
    with pytest.raises(ValueError, match="translocation"):
        ProteinSpec("B", labels=(25,), translocation_to=0)
    with pytest.raises(ValueError, match="cell_line"):
        simulate_field(ProteinSpec("B", labels=(0,)), shape=(128, 128), cell_line="nope")
    with pytest.raises(ValueError, match="timepoint"):
        simulate_field(ProteinSpec("B", labels=(0,)), shape=(128, 128), timepoint=2)


# --- files ------------------------------------------------------------------------------
SMALL = {
    "shape": [192, 192],
    "train": {"n_proteins": 2},
    "test": {"n_proteins": 1},
    "timelapse": {
        "n_wells": 1,
        "n_translocating": 1,
        "n_frames": 3,
        "onsets": [1],
        "shape": [192, 192],
    },
}


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_more_proteins_than_wells_names_the_plate(tmp_path):
    params = {**SMALL, "train": {"n_proteins": 97, "plates": ["P01"]}}
    with pytest.raises(ValueError, match="plate P01: 97 wells do not fit on a 96-well plate"):
        write_atlas(tmp_path, preset="tiny", **params)
    assert not (tmp_path / "images").exists()  # refused before any field was simulated


def test_write_atlas_layout_and_reproducibility(tmp_path):
    import tifffile

    sheet_path = write_atlas(tmp_path / "a", preset="tiny", seed=3, **SMALL)
    assert sheet_path == tmp_path / "a" / "samplesheet.csv"
    out = sheet_path.parent
    sheet = pd.read_csv(sheet_path, dtype={"labels": str}, keep_default_na=False)
    assert list(sheet.columns) == [
        "source",
        "format",
        "plate",
        "well",
        "field",
        "timepoint",
        "protein",
        "cell_line",
        "labels",
        "split",
        "pixel_size_um",
    ]
    assert len(sheet) == 2 + 1 + 3
    assert set(sheet["format"]) == {"hpa"} and set(sheet["split"]) == {"train", "test"}
    train = set(sheet.loc[sheet["split"] == "train", "protein"])
    test = set(sheet.loc[sheet["split"] == "test", "protein"])
    assert not train & test
    assert set(sheet.loc[sheet["split"] == "train", "plate"]).isdisjoint(
        sheet.loc[sheet["split"] == "test", "plate"]
    )
    for row in sheet.itertuples():
        assert not Path(row.source).is_absolute()
        fid = make_field_id(row.plate, row.well, row.field, row.timepoint)
        assert row.source == f"images/{row.plate}/{fid}"
        for colour in ("blue", "red", "yellow", "green"):
            img = tifffile.imread(out / f"{row.source}_{colour}.tif")
            assert img.shape == (192, 192) and img.dtype == np.uint16
        cells = tifffile.imread(out / "truth" / "masks" / f"{fid}_cells.tif")
        nuclei = tifffile.imread(out / "truth" / "masks" / f"{fid}_nuclei.tif")
        assert cells.dtype == np.int32 and np.all(cells[nuclei > 0] == nuclei[nuclei > 0])
    # Time-lapse labels follow the translocation.
    tl = sheet[sheet["protein"].str.startswith("SIMT")].sort_values("timepoint")
    assert list(tl["labels"]) == ["25", "0", "0"]

    truth = pd.read_parquet(out / "truth" / "cells.parquet")
    for col in (
        "field_id",
        "plate",
        "well",
        "field",
        "timepoint",
        "protein",
        "cell_id",
        "labels",
        "dna_content",
        "cycle_phase",
        "protein_level",
        "centroid_y",
        "centroid_x",
    ):
        assert col in truth.columns
    assert set(truth["field_id"]) == {
        make_field_id(r.plate, r.well, r.field, r.timepoint) for r in sheet.itertuples()
    }
    prot = pd.read_csv(out / "truth" / "proteins.csv", dtype=str, keep_default_na=False)
    assert list(prot.columns) == [
        "protein",
        "cell_line",
        "labels",
        "cell_cycle_dependent",
        "cycle_effect",
        "variable",
        "variability",
        "translocation_from",
        "translocation_to",
        "onset_frame",
        "plates",
        "spatial_label",
        "cycle_label",
    ]
    moving = prot[prot["onset_frame"] != ""]
    assert list(moving["translocation_from"]) == ["25"] and list(moving["onset_frame"]) == ["1"]
    import json

    record = json.loads((out / "simulation.json").read_text())
    assert record["preset"] == "tiny" and record["seed"] == 3 and "version" in record

    # Byte-identical rerun; a different seed differs.
    write_atlas(tmp_path / "b", preset="tiny", seed=3, **SMALL)
    assert _digest(out) == _digest(tmp_path / "b")
    write_atlas(tmp_path / "c", preset="tiny", seed=4, **SMALL)
    da, dc = _digest(out), _digest(tmp_path / "c")
    assert da.keys() == dc.keys()
    assert da["images/P01/P01_B02_1_t000_green.tif"] != dc["images/P01/P01_B02_1_t000_green.tif"]


def test_presets_exist():
    assert {"tiny", "demo", "benchmark"} <= set(PRESETS)
    assert PRESETS["benchmark"]["shape"] == [2048, 2048]
    with pytest.raises(ValueError, match="unknown simulate option"):
        write_atlas("/nonexistent/never", preset="tiny", bogus=1)


def test_zstack_option(tmp_path):
    try:
        from locatlas.simulate.widefield import simulate_widefield_stack  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="widefield"):
            write_atlas(tmp_path, preset="tiny", zstack=True, **SMALL)
        return
    import tifffile

    write_atlas(
        tmp_path,
        preset="tiny",
        shape=[192, 192],
        train={"n_proteins": 1},
        test={"n_proteins": 0},
        timelapse=None,
        zstack={"n_z": 5, "max_fields": 1},
    )
    stacks = sorted((tmp_path / "truth" / "widefield").glob("*_stack.ome.tif"))
    assert len(stacks) == 1
    # No random UUID in the OME-XML (tifffile's default): reruns are byte-identical.
    with tifffile.TiffFile(stacks[0]) as tif:
        assert "urn:uuid:" in tif.ome_metadata
        uid = tif.ome_metadata.split("urn:uuid:")[1][:36]
    assert uuid.UUID(uid).version == 5
    stack = tifffile.imread(stacks[0])
    assert stack.shape == (5, len(ROLES), 192, 192) and stack.dtype == np.uint16
    infocus = tifffile.imread(str(stacks[0]).replace("_stack.ome.tif", "_infocus.tif"))
    assert infocus.shape == (len(ROLES), 192, 192) and infocus.dtype == np.float32
