"""Per-cell features: checked against scikit-image / plain numpy on the same labels,
and against constructed images whose answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from skimage.draw import ellipse
from skimage.measure import regionprops_table

from locatlas.segment import feature_columns, measure_cells, segment_field
from locatlas.segment._toyfield import toy_field
from locatlas.segment.features import TEXTURE_LEVELS


@pytest.fixture(scope="module")
def field():
    toy = toy_field((384, 384), seed=7, cell_radius_um=11.0, roles=("nucleus", "er", "protein"))
    nuclei, cells, _ = segment_field(toy.image, roles=toy.roles, pixel_size_um=0.2)
    table = measure_cells(toy.image, nuclei, cells, roles=toy.roles, pixel_size_um=0.2)
    return toy, nuclei, cells, table


def test_columns_and_rows(field):
    toy, nuclei, cells, table = field
    assert list(table.columns) == feature_columns(toy.roles)
    assert table["cell_id"].tolist() == sorted(set(np.unique(cells)) - {0})
    assert table["cell_id"].dtype == np.int32 and table["edge"].dtype == bool
    for col in ("nucleus_integrated", "er_p05", "er_p50", "er_p95", "protein_er_pearson"):
        assert col in table.columns
    assert "nucleus_radial_frac_1" not in table.columns  # radial: non-nucleus roles only
    # Every cell here has a nucleus and cytoplasm: no feature is undefined.
    assert (table["nucleus_area_px"] > 0).all() and (table["cytoplasm_area_um2"] > 0).all()
    assert table.notna().all().all(), table.columns[table.isna().any()].tolist()


def test_geometry_matches_scikit_image(field):
    toy, nuclei, cells, table = field
    props = pd.DataFrame(
        regionprops_table(
            cells,
            properties=(
                "label",
                "area",
                "centroid",
                "bbox",
                "eccentricity",
                "orientation",
                "axis_major_length",
                "axis_minor_length",
                "solidity",
            ),
        )
    )
    assert np.array_equal(props["label"], table["cell_id"])
    np.testing.assert_array_equal(props["area"], table["cell_area_px"])
    np.testing.assert_allclose(props["centroid-0"], table["centroid_y"], atol=1e-9)
    np.testing.assert_allclose(props["centroid-1"], table["centroid_x"], atol=1e-9)
    for i, name in enumerate(("bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1")):
        np.testing.assert_array_equal(props[f"bbox-{i}"], table[name])
    np.testing.assert_allclose(props["eccentricity"], table["eccentricity"], atol=1e-6)
    np.testing.assert_allclose(props["orientation"], table["orientation"], atol=1e-6)
    np.testing.assert_allclose(props["axis_major_length"] * 0.2, table["major_axis_um"], rtol=1e-6)
    np.testing.assert_allclose(props["axis_minor_length"] * 0.2, table["minor_axis_um"], rtol=1e-6)
    # Solidity: hull of pixel corners (ours) vs of pixel centres (scikit-image).
    assert (table["solidity"] <= 1).all()
    np.testing.assert_allclose(props["solidity"], table["solidity"], atol=0.06)
    np.testing.assert_allclose(table["cell_area_um2"], table["cell_area_px"] * 0.04)


def test_solidity_of_known_shapes():
    lab = np.zeros((120, 200), np.int32)
    lab[10:40, 10:70] = 1  # rectangle: solidity 1
    rr, cc = ellipse(80, 50, 30, 20)
    lab[rr, cc] = 2  # ellipse: ~1
    lab[10:70, 110:130] = 3  # an L: 60×20 + 20×50 in a 60×70 box
    lab[50:70, 130:180] = 3
    img = np.ones((1, *lab.shape), np.uint16)
    t = measure_cells(img, lab, lab, roles=["nucleus"], pixel_size_um=1.0)
    sol = dict(zip(t["cell_id"], t["solidity"], strict=True))
    assert sol[1] == pytest.approx(1.0, abs=1e-3)
    assert 0.96 <= sol[2] <= 1.0
    l_area = 60 * 20 + 20 * 50
    hull = 60 * 70 - 0.5 * 50 * 40  # the triangle cut off above the foot
    assert sol[3] == pytest.approx(l_area / hull, rel=0.02)


def test_intensities_match_numpy(field):
    toy, nuclei, cells, table = field
    img = toy.image
    bg = {}
    for c, role in enumerate(toy.roles):
        outside = img[c][cells == 0]
        bg[role] = table[f"{role}_background"].iloc[0]
        assert abs(bg[role] - np.median(outside)) <= 0.02 * np.median(outside) + 1
    assert len(table) >= 5
    for _, row in table.iterrows():
        k = row["cell_id"]
        m = cells == k
        mn = m & (nuclei == k)
        for c, role in enumerate(toy.roles):
            v = img[c][m].astype(np.float64)
            assert row[f"{role}_mean"] == pytest.approx(v.mean(), rel=1e-9)
            assert row[f"{role}_std"] == pytest.approx(v.std(), rel=1e-6)
            assert row[f"{role}_integrated"] == pytest.approx(v.sum() - bg[role] * v.size)
            for q in (5, 50, 95):
                assert row[f"{role}_p{q:02d}"] == pytest.approx(np.percentile(v, q), abs=1e-9)
            assert row[f"{role}_nuc_mean"] == pytest.approx(img[c][mn].mean(), rel=1e-9)
            assert row[f"{role}_cyto_mean"] == pytest.approx(img[c][m & ~mn].mean(), rel=1e-9)


def test_percentiles_of_float_images(field):
    toy, nuclei, cells, _ = field
    img = toy.image.astype(np.float32) / 7.0 - 3.0
    t = measure_cells(img, nuclei, cells, roles=toy.roles, pixel_size_um=0.2)
    k = int(t["cell_id"].iloc[3])
    v = img[1][cells == k].astype(np.float64)
    for q in (5, 50, 95):
        assert t[f"er_p{q:02d}"].iloc[3] == pytest.approx(np.percentile(v, q), rel=1e-9, abs=1e-9)


def test_percentiles_of_integer_images(field, monkeypatch):
    """Sorting each cell's values and one sort of (label, value) keys agree exactly."""
    from locatlas.segment import features

    toy, nuclei, cells, _ = field
    img = np.clip(toy.image, 0, 65535).astype(np.uint16)
    tables = []
    for min_px in (0, 10**12):  # per-cell sorts / one sort of keys
        monkeypatch.setattr(features, "_SORT_PER_LABEL_MIN_PX", min_px)
        tables.append(measure_cells(img, nuclei, cells, roles=toy.roles, pixel_size_um=0.2))
    pd.testing.assert_frame_equal(tables[0], tables[1], check_exact=True)
    for row in tables[0].iloc[::5].itertuples():
        v = img[1][cells == row.cell_id]
        for q in (5, 50, 95):
            assert getattr(row, f"er_p{q:02d}") == pytest.approx(np.percentile(v, q), rel=1e-12)


def _two_cells():
    """Two square cells, each with a centred square nucleus."""
    cells = np.zeros((64, 128), np.int32)
    cells[4:60, 4:60] = 1
    cells[4:60, 68:124] = 2
    nuclei = np.zeros_like(cells)
    nuclei[22:42, 22:42] = 1
    nuclei[22:42, 86:106] = 2
    return nuclei, cells


def test_colocalization_known_answers():
    nuclei, cells = _two_cells()
    rng = np.random.default_rng(1)
    ref = rng.uniform(100, 1000, cells.shape)
    protein = ref.copy()
    protein[:, 64:] = 1100 - ref[:, 64:]  # anti-correlated in cell 2
    img = np.stack([np.full(cells.shape, 10.0), ref, protein])
    t = measure_cells(img, nuclei, cells, roles=["nucleus", "er", "protein"], pixel_size_um=1)
    assert t["protein_er_pearson"].tolist() == pytest.approx([1.0, -1.0], abs=1e-9)
    assert (t[["protein_er_manders_m1", "protein_er_manders_m2"]].to_numpy() <= 1).all()


def test_manders_disjoint_and_identical():
    nuclei, cells = _two_cells()
    ref = np.zeros(cells.shape)
    ref[:, :32] = 1000.0  # left half of cell 1
    protein = np.zeros(cells.shape)
    protein[:, 32:64] = 1000.0  # right half of cell 1: disjoint from ref
    protein[:, 64:] = 500.0
    ref[:, 64:] = 500.0
    img = np.stack([np.full(cells.shape, 10.0), ref, protein])
    t = measure_cells(img, nuclei, cells, roles=["nucleus", "er", "protein"], pixel_size_um=1)
    assert t["protein_er_manders_m1"].iloc[0] == pytest.approx(0.0)
    assert t["protein_er_manders_m2"].iloc[0] == pytest.approx(0.0)


@pytest.mark.parametrize(("where", "ring"), [("centre", 1), ("membrane", 4)])
def test_radial_distribution(where, ring):
    nuclei, cells = _two_cells()
    yy, xx = np.mgrid[0 : cells.shape[0], 0 : cells.shape[1]]
    centre_x = np.where(xx < 64, 31.5, 95.5)
    dist = np.hypot(yy - 31.5, xx - centre_x)
    protein = np.full(cells.shape, 100.0)
    if where == "centre":
        protein[dist < 6] = 5000.0
    else:
        edge = np.minimum.reduce(
            [yy - 4, 59 - yy, np.abs(xx - centre_x) * 0 + 27.5 - np.abs(xx - centre_x)]
        )
        protein[(edge < 3) & (cells > 0)] = 5000.0
    img = np.stack([np.full(cells.shape, 10.0), protein])
    t = measure_cells(img, nuclei, cells, roles=["nucleus", "protein"], pixel_size_um=1)
    fracs = t[[f"protein_radial_frac_{i}" for i in range(1, 5)]].to_numpy()
    np.testing.assert_allclose(fracs.sum(axis=1), 1.0, atol=1e-9)
    assert (fracs.argmax(axis=1) == ring - 1).all()
    # Uniform signal: every ring has the share of its area.
    flat = np.stack([np.full(cells.shape, 10.0), np.full(cells.shape, 300.0) + (cells > 0)])
    t = measure_cells(flat, nuclei, cells, roles=["nucleus", "protein"], pixel_size_um=1)
    meanfrac = t[[f"protein_radial_meanfrac_{i}" for i in range(1, 5)]].to_numpy()
    np.testing.assert_allclose(meanfrac, 1.0, atol=1e-6)


def test_texture_known_answers():
    nuclei, cells = _two_cells()
    protein = np.full(cells.shape, 200.0)
    protein[:, 64:] = np.where((np.arange(64) // 4) % 2 == 0, 100.0, 900.0)[None, :]  # stripes
    protein[0, 0] = 0.0  # spread the field range
    protein[-1, -1] = 1000.0
    img = np.stack([np.full(cells.shape, 10.0), protein])
    t = measure_cells(img, nuclei, cells, roles=["nucleus", "protein"], pixel_size_um=0.2)
    flat, striped = t.iloc[0], t.iloc[1]
    assert flat["protein_tex_contrast"] == pytest.approx(0.0)
    assert flat["protein_tex_homogeneity"] == pytest.approx(1.0)
    assert flat["protein_tex_asm"] == pytest.approx(1.0)
    assert flat["protein_tex_entropy"] == pytest.approx(0.0, abs=1e-12)
    assert striped["protein_tex_contrast"] > 10
    assert striped["protein_tex_homogeneity"] < 0.8  # vertical pairs are all alike
    assert 0 < striped["protein_tex_entropy"] <= 2 * np.log2(TEXTURE_LEVELS)


def test_dna_content_proxy_scales():
    """nucleus_integrated is background-corrected: doubling the DNA signal of one
    nucleus doubles it."""
    nuclei, cells = _two_cells()
    dna = np.full(cells.shape, 100.0)
    dna[nuclei == 1] += 1000.0
    dna[nuclei == 2] += 2000.0
    img = np.stack([dna])
    t = measure_cells(img, nuclei, cells, roles=["nucleus"], pixel_size_um=1)
    assert t["nucleus_background"].iloc[0] == pytest.approx(100.0)
    ratio = t["nucleus_integrated"].iloc[1] / t["nucleus_integrated"].iloc[0]
    assert ratio == pytest.approx(2.0)
    assert t["nucleus_nuc_integrated"].tolist() == pytest.approx([400 * 1000.0, 400 * 2000.0])


def test_cell_without_nucleus_pixels_and_inputs_untouched():
    nuclei, cells = _two_cells()
    nuclei[nuclei == 2] = 0
    img = np.stack(
        [
            np.full(cells.shape, 10, np.uint16),
            np.arange(cells.size, dtype=np.uint16).reshape(cells.shape),
        ]
    )
    before = (img.copy(), nuclei.copy(), cells.copy())
    t = measure_cells(img, nuclei, cells, roles=["nucleus", "er"], pixel_size_um=1)
    assert t["nucleus_area_px"].tolist() == [400, 0]
    assert np.isnan(t["er_nuc_mean"].iloc[1]) and np.isnan(t["nucleus_solidity"].iloc[1])
    assert all(np.array_equal(a, b) for a, b in zip(before, (img, nuclei, cells), strict=True))


def test_cell_all_nucleus_and_integer_sums_exact():
    """A cell without cytoplasm pixels (empty segment) next to ordinary cells; integer
    images give the same sums as their float64 copy (integer sums are exact; float
    percentiles use lossy sort keys, so they are left out)."""
    nuclei, cells = _two_cells()
    cells[cells == 1] = 0
    cells[22:42, 22:42] = 1  # cell 1 is exactly its nucleus
    rng = np.random.default_rng(0)
    img = rng.integers(0, 60_000, size=(3, *cells.shape), dtype=np.uint16)
    roles = ["nucleus", "er", "protein"]
    t = measure_cells(img, nuclei, cells, roles=roles, pixel_size_um=1)
    assert t["cytoplasm_area_um2"].iloc[0] == 0 and np.isnan(t["er_cyto_mean"].iloc[0])
    assert t["er_nuc_mean"].iloc[0] == pytest.approx(t["er_mean"].iloc[0], rel=1e-12)
    m = (cells == 2) & (nuclei != 2)
    assert t["er_cyto_mean"].iloc[1] == pytest.approx(img[1][m].mean(), rel=1e-12)
    as_float = measure_cells(img.astype(np.float64), nuclei, cells, roles=roles, pixel_size_um=1)
    sums = [c for c in t.columns if not c.endswith(("_p05", "_p50", "_p95"))]  # float keys
    pd.testing.assert_frame_equal(t[sums], as_float[sums], check_exact=True)


def test_bad_input():
    nuclei, cells = _two_cells()
    img = np.zeros((2, *cells.shape))
    with pytest.raises(ValueError, match="roles"):
        measure_cells(img, nuclei, cells, roles=["nucleus"], pixel_size_um=1)
    with pytest.raises(ValueError, match="shape"):
        measure_cells(img, nuclei[:10], cells, roles=["nucleus", "er"], pixel_size_um=1)
    with pytest.raises(ValueError, match="integer"):
        measure_cells(img, nuclei.astype(float), cells, roles=["nucleus", "er"], pixel_size_um=1)


def test_deterministic(field):
    toy, nuclei, cells, table = field
    again = measure_cells(toy.image, nuclei, cells, roles=toy.roles, pixel_size_um=0.2)
    pd.testing.assert_frame_equal(table, again)
