"""Atlas aggregation: truth recovery on simulated atlases, outputs, errors.

The main fixture simulates 100 proteins (~96k cells, 48 shards, half of the
localization shards in shuffled row order) with planted cell-cycle dependence,
variability and translocations, and runs ``build_atlas`` once (PCA map, fast);
most tests read its outputs. A tiny atlas checks reproducibility, batch-size
independence, crops/montage and errors. UMAP and t-SNE runs are marked slow.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from locatlas.aggregate import (
    AggregateInputError,
    AggregateParams,
    build_atlas,
    simulate_atlas_tables,
    threshold_vector,
)
from locatlas.aggregate.cellcycle import cycle_test, marker_position
from locatlas.aggregate.concordance import concordance, parse_locations, read_reference
from locatlas.aggregate.profiles import location_calls, wilson_lower
from locatlas.aggregate.statistics import fdr_bh, permutations_of
from locatlas.aggregate.tables import iter_shard, make_shard_inputs
from locatlas.aggregate.timecourse import change_points
from locatlas.classes import load_classes

CLASSES = load_classes()


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    root = tmp_path_factory.mktemp("agg_sim")
    return simulate_atlas_tables(
        root, n_proteins=100, cells_per_field=40, shuffle_localization=True, seed=1
    )


@pytest.fixture(scope="module")
def truth(sim) -> pd.DataFrame:
    return pd.read_csv(Path(sim.truth_dir) / "proteins.csv", keep_default_na=False)


def _reference_table(truth: pd.DataFrame, path: Path) -> Path:
    """HPA v18-format reference: truth labels, except three proteins changed."""
    rows = []
    for i, r in truth.iterrows():
        labels = r["labels"].replace(";", " ")
        if i == 0:
            labels = "27"  # disagrees (unless the protein is in rods & rings)
        rows.append((f"{r['protein']}_100_{i}_A1_1", labels))
        rows.append((f"{r['protein']}_100_{i}_A1_2", labels))
    rows.append(("ENSG99999999999_1_1_A1_1", "0"))  # a gene the atlas does not have
    pd.DataFrame(rows, columns=["Id", "Target"]).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def atlas(sim, truth, tmp_path_factory):
    out = tmp_path_factory.mktemp("agg_out")
    ref = _reference_table(truth, out.parent / "reference.csv")
    extra_png = out.parent / "extra.png"
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [1, 0])
    fig.savefig(extra_png)
    outputs = build_atlas(
        sim.cells_paths,
        sim.localization_paths,
        sim.embedding_paths,
        str(out / "atlas"),
        classes=CLASSES,
        thresholds=sim.thresholds,
        params={"map_method": "pca", "n_clusters": 8},
        reference=str(ref),
        truth_dir=sim.truth_dir,
        extra_sections=[
            {"title": "Segmentation F1", "html": "<p>F1 = 0.91</p>"},
            {"title": "Clearing before/after", "image": str(extra_png), "caption": "Clearing."},
        ],
    )
    return outputs


@pytest.fixture(scope="module")
def proteins(atlas, truth) -> pd.DataFrame:
    pr = pd.read_parquet(atlas["proteins.parquet"])
    return truth.merge(pr, on=["protein", "cell_line"], suffixes=("_truth", ""))


# ---------------------------------------------------------------------- truth recovery
def test_cell_cycle_recovery(proteins):
    t = proteins["cell_cycle_dependent"].astype(bool).to_numpy()
    called = proteins["cycle_dependent"].astype(bool).to_numpy()
    assert t.sum() == 20
    recall = (t & called).sum() / t.sum()
    false_frac = (~t & called).sum() / max(called.sum(), 1)
    assert recall >= 0.9, recall
    assert false_frac <= 0.05, false_frac
    # the statistics behind the calls: cycle-dependent proteins explain far more variance
    assert proteins.loc[t, "cycle_eta2"].min() > proteins.loc[~t, "cycle_eta2"].max()
    assert (proteins.loc[t, "cycle_log2fc"] > 0).all()  # level rises with DNA content


def test_translocations_in_alerts(atlas, proteins):
    alerts = pd.read_csv(atlas["alerts.csv"], keep_default_na=False)
    line = alerts[alerts["level"] == "cell_line"]
    moved = proteins[proteins["translocation_from"] != ""]
    assert len(moved) == 20
    hits = 0
    for _, r in moved.iterrows():
        a = line[line["protein"] == r["protein"]]
        loss = a[(a["location"] == r["translocation_from"]) & (a["direction"] == "loss")]
        gain = a[(a["location"] == r["translocation_to"]) & (a["direction"] == "gain")]
        ok = [abs(int(x) - int(r["onset_frame"])) <= 1 for x in [*loss["onset"], *gain["onset"]]]
        hits += any(ok)
        if len(loss) and len(gain):
            assert gain.iloc[0]["partner"] == r["translocation_from"]
    assert hits / len(moved) >= 0.9
    static = set(proteins.loc[proteins["translocation_from"] == "", "protein"])
    assert not static & set(line["protein"]), "alert for a protein without a planted change"
    # well-level series alert too (both wells of every moved protein)
    well = alerts[alerts["level"] == "well"]
    assert set(moved["protein"]) <= set(well["protein"])


def test_variability_recall(proteins):
    t = proteins["variable_truth"].astype(bool).to_numpy()
    flag = proteins["variable"].astype(bool).to_numpy()
    assert t.sum() == 25
    assert (t & flag).sum() / t.sum() >= 0.9
    clean = (
        ~t & ~proteins["cell_cycle_dependent"].astype(bool) & (proteins["translocation_from"] == "")
    )
    assert (clean & flag).sum() / clean.sum() <= 0.05
    spatial = proteins["variable_kind"] == "spatial"
    assert proteins.loc[spatial, "variable_spatial"].all()
    assert not proteins.loc[proteins["variable_kind"] == "variable", "variable_spatial"].any()


def test_location_calls_match_truth(proteins):
    plain = (proteins["translocation_from"] == "") & (proteins["variable_kind"] != "spatial")
    ok = [
        parse_locations(r["labels"], CLASSES)
        == parse_locations(r["main_locations"], CLASSES)
        | parse_locations(r["additional_locations"], CLASSES)
        for _, r in proteins[plain].iterrows()
    ]
    assert np.mean(ok) >= 0.95
    assert (proteins["n_cells"] > 500).all()
    fr = proteins[[f"frac_{s}" for s in CLASSES.slugs]].to_numpy()
    assert np.all((fr >= 0) & (fr <= 1))


def test_evaluation_json(atlas):
    ev = json.loads(Path(atlas["evaluation.json"]).read_text())
    t = ev["truth"]
    assert t["cycle"]["recall"] >= 0.9 and t["cycle"]["false_discovery_proportion"] <= 0.05
    assert t["translocation"]["recall_onset_within_1"] >= 0.9
    assert t["variability"]["recall"] >= 0.9
    assert ev["cell_level"]["top1_accuracy_single_label"] > 0.9
    assert ev["n_cells_h5ad"] == ev["n_usable_cells"]


# ---------------------------------------------------------------------------- outputs
def test_timecourse_table(atlas, sim):
    tc = pd.read_parquet(atlas["timecourse.parquet"])
    assert set(tc["level"]) == {"cell_line", "well"}
    line = tc[tc["level"] == "cell_line"]
    assert line.groupby(["protein", "cell_line"]).size().eq(sim.n_timepoints).all()
    well = tc[tc["level"] == "well"]
    # well rows sum to the cell-line rows
    a = well.groupby(["protein", "timepoint"])["n_cells"].sum().sort_index()
    b = line.set_index(["protein", "timepoint"])["n_cells"].sort_index()
    assert (a.to_numpy() == b.to_numpy()).all()
    for col in ("main_locations", "additional_locations", "main_confidence", "reliability"):
        assert col in tc


def test_h5ad(atlas, sim):
    import anndata as ad

    a = ad.read_h5ad(atlas["cells.h5ad"])
    ev = json.loads(Path(atlas["evaluation.json"]).read_text())
    assert a.n_obs == ev["n_usable_cells"] > 0.9 * sim.n_cells
    assert a.n_vars == len(CLASSES) and list(a.var_names) == list(CLASSES.slugs)
    assert a.obsm["X_pca"].shape == (a.n_obs, 2)
    assert a.obsm["X_embedding"].shape == (a.n_obs, 16)
    assert a.obsm["X_embedding"].dtype == np.float32
    for c in ("field_id", "cell_id", "protein", "cell_line", "timepoint", "cycle_position"):
        assert c in a.obs
    assert a.obs_names.is_unique
    # X rows are the cells' probabilities: check a few against the localization tables
    loc = pd.concat([pd.read_parquet(p) for p in sim.localization_paths[:2]])
    key = loc["field_id"].astype(str) + "/" + loc["cell_id"].astype(str)
    loc = loc.set_index(key)
    common = a.obs_names.intersection(loc.index)[:50]
    assert len(common) == 50
    np.testing.assert_allclose(
        a[common].X, loc.loc[common, CLASSES.prob_columns].to_numpy(), rtol=1e-6
    )
    # embedding rows follow the cells (shuffled localization shards included)
    emb = np.load(sim.embedding_paths[1])
    loc1 = pd.read_parquet(sim.localization_paths[1])
    k1 = (loc1["field_id"].astype(str) + "/" + loc1["cell_id"].astype(str)).to_numpy()
    pos = {k: i for i, k in enumerate(k1)}
    names = [n for n in a.obs_names[a.obs["shard"] == 1][:20]]
    np.testing.assert_array_equal(a[names].obsm["X_embedding"], emb[[pos[n] for n in names]])
    # cycle phases: most cells in G1 (as simulated: ~50 %)
    g1 = (a.obs["cycle_phase"] == "G1").mean()
    assert 0.35 < g1 < 0.65


def test_report(atlas):
    html = Path(atlas["report.html"]).read_text()
    for title in (
        "Overview",
        "Location atlas",
        "Map of cells",
        "Map of proteins",
        "Cell-level agreement with labels",
        "Single-cell variability",
        "Cell-cycle dependence",
        "Time courses and alerts",
        "Alerts",
        "Concordance with the reference annotation",
        "Truth recovery (simulated atlas)",
        "Methods and parameters",
        "Segmentation F1",
        "Clearing before/after",
    ):
        assert f">{title}</h2>" in html, title
    imgs = re.findall(r'<img src="([^"]+)"', html)
    assert len(imgs) >= 9
    assert all(s.startswith("data:image/png;base64,") for s in imgs)
    png = base64.b64decode(imgs[0].split(",", 1)[1])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert html.count("<figcaption>") == len(imgs)
    for name in (
        "cells_map_by_location",
        "cells_map_by_cluster",
        "proteins_map",
        "timecourses",
        "confusion_matrix",
        "cell_cycle",
        "variability",
        "concordance",
    ):
        assert f"figures/{name}.png" in atlas
        assert Path(atlas[f"figures/{name}.png"]).stat().st_size > 1000


def test_concordance_end_to_end(atlas, proteins):
    per = pd.read_csv(atlas["concordance_proteins.csv"], keep_default_na=False)
    assert len(per) == len(proteins)  # the extra reference gene is not matched
    per = per.merge(proteins[["protein", "labels", "translocation_from", "variable_kind"]])
    # where calls equal the truth labels and the reference is the truth: full agreement
    first = proteins.iloc[0]["protein"]
    for _, r in per[per["protein"] != first].iterrows():
        pred = parse_locations(r["predicted"], CLASSES)
        ref = parse_locations(r["reference"], CLASSES)
        assert ref == parse_locations(r["labels"], CLASSES)
        expect = "full" if pred == ref else ("partial" if pred & ref else "none")
        assert r["agreement"] == expect
    assert per.loc[per["protein"] == first, "reference"].item() == "Rods & rings"
    ev = json.loads(Path(atlas["evaluation.json"]).read_text())["concordance"]
    assert ev["n_proteins_matched"] == len(proteins)
    assert ev["full_agreement"] == pytest.approx((per["agreement"] == "full").mean())


# ------------------------------------------------------------------------ tiny atlases
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import zarr

    root = tmp_path_factory.mktemp("agg_tiny")
    sim = simulate_atlas_tables(
        root / "in",
        n_proteins=20,
        cells_per_field=20,
        n_timepoints=4,
        fields_per_shard=60,
        shuffle_localization=True,
        seed=3,
    )
    crops = []
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:16, :16]
    r = np.hypot(yy - 7.5, xx - 7.5)
    for i, p in enumerate(sim.cells_paths):
        n = pq.ParquetFile(p).metadata.num_rows
        img = np.stack([(r < 3) * 900, (r < 6) * 500, (r < 6) * 300, (r < 5) * 700])
        data = (np.broadcast_to(img, (n, 4, 16, 16)) * rng.uniform(0.5, 1, (n, 1, 1, 1))).astype(
            np.uint16
        )
        if i % 2:  # a plain (N, C, S, S) array: masks derived from the channels
            zarr.create_array(str(root / f"crops-{i}.zarr"), data=data)
        else:  # a group with crops and masks
            g = zarr.open_group(str(root / f"crops-{i}.zarr"), mode="w")
            g.create_array("crops", data=data)
            g.create_array(
                "masks", data=np.broadcast_to((r < 6) + (r < 3), (n, 16, 16)).astype(np.uint8)
            )
        crops.append(str(root / f"crops-{i}.zarr"))
    return sim, crops, root


def _tiny_build(tiny, name: str, **params):
    sim, crops, root = tiny
    return build_atlas(
        sim.cells_paths,
        sim.localization_paths,
        sim.embedding_paths,
        str(root / name),
        classes=CLASSES,
        thresholds=sim.thresholds,
        params={"map_method": "pca", "map_sample_per_protein": 30, **params},
        crops_paths=crops,
    )


def test_reproducible_and_batch_independent(tiny):
    a = _tiny_build(tiny, "a")
    b = _tiny_build(tiny, "b")
    for name in (
        "proteins.parquet",
        "timecourse.parquet",
        "alerts.csv",
        "evaluation.json",
        "cells.h5ad",
        "report.html",
    ):
        assert Path(a[name]).read_bytes() == Path(b[name]).read_bytes(), name
    assert "figures/qc_montage.png" in a
    assert ">QC montage</h2>" in Path(a["report.html"]).read_text()
    # batches of 997 rows (streaming across record-batch boundaries) -> same atlas
    c = _tiny_build(tiny, "c", batch_rows=997)
    pa_, pc = pd.read_parquet(a["proteins.parquet"]), pd.read_parquet(c["proteins.parquet"])
    num = [x for x in pa_.columns if x.startswith(("frac_", "mean_p_", "n_", "int_"))]
    pd.testing.assert_frame_equal(pa_[num], pc[num], rtol=1e-9, atol=1e-12)
    assert (pa_["main_locations"] == pc["main_locations"]).all()
    al, cl = pd.read_csv(a["alerts.csv"]), pd.read_csv(c["alerts.csv"])
    pd.testing.assert_frame_equal(
        al[["protein", "location", "onset"]], cl[["protein", "location", "onset"]]
    )


def test_h5ad_cap_samples(tiny):
    import anndata as ad

    out = _tiny_build(tiny, "capped", h5ad_max_cells=500, h5ad_embedding=False)
    a = ad.read_h5ad(out["cells.h5ad"])
    assert a.n_obs == 500
    assert "X_embedding" not in a.obsm and a.obsm["X_pca"].shape == (500, 2)
    assert a.uns["locatlas"]["n_atlas_cells"] > 5000
    assert "sample" in a.uns["locatlas"]["sampling"]


def test_input_errors(tiny, tmp_path):
    sim, _, _ = tiny
    kw = {"classes": CLASSES, "thresholds": None, "params": {"map_method": "none"}}
    bad = tmp_path / "cells.parquet"
    pq.write_table(pq.read_table(sim.cells_paths[0]).drop(["protein"]), bad)
    with pytest.raises(AggregateInputError, match="cells.parquet.*protein"):
        build_atlas([str(bad)], sim.localization_paths[:1], [], str(tmp_path / "o"), **kw)
    with pytest.raises(AggregateInputError, match="not found"):
        build_atlas([str(tmp_path / "nope.parquet")], sim.localization_paths[:1], [], "o", **kw)
    emb = tmp_path / "e.npy"
    np.save(emb, np.zeros((3, 16), np.float32))
    with pytest.raises(AggregateInputError, match=r"e\.npy.*3 embedding rows"):
        build_atlas(
            sim.cells_paths[:1], sim.localization_paths[:1], [str(emb)], str(tmp_path), **kw
        )
    dup = tmp_path / "loc.parquet"
    t = pq.read_table(sim.localization_paths[1])
    pq.write_table(pa_concat(t), dup)
    with pytest.raises(AggregateInputError, match="duplicate cell key"):
        build_atlas(sim.cells_paths[1:2], [str(dup)], [], str(tmp_path / "o2"), **kw)
    # the same bad shard with skip_bad_shards: quarantined, listed, the rest aggregated
    out = build_atlas(
        [str(bad), *sim.cells_paths[1:3]],
        sim.localization_paths[:3],
        [],
        str(tmp_path / "q"),
        classes=CLASSES,
        thresholds=None,
        params={"map_method": "none", "skip_bad_shards": True},
    )
    ev = json.loads(Path(out["evaluation.json"]).read_text())
    assert [q["shard"] for q in ev["quarantined_shards"]] == [0]
    assert "protein" in ev["quarantined_shards"][0]["reason"]
    assert ev["n_rows"] == sum(pq.ParquetFile(p).metadata.num_rows for p in sim.cells_paths[1:3])
    assert ">Quarantined inputs</h2>" in Path(out["report.html"]).read_text()
    with pytest.raises(ValueError, match="unknown aggregate parameter"):
        AggregateParams.from_any({"fdr_typo": 0.1})
    with pytest.raises(ValueError, match="unknown class"):
        threshold_vector(CLASSES, {"not_a_class": 0.5}, 0.5)


def pa_concat(t):
    import pyarrow as pa

    return pa.concat_tables([t, t.slice(0, 5)])


def test_iter_shard_joins_shuffled_localization(tiny):
    sim, _, _ = tiny
    shard = make_shard_inputs(sim.cells_paths, sim.localization_paths, sim.embedding_paths)[1]
    loc = pd.read_parquet(sim.localization_paths[1])
    cells = pd.read_parquet(sim.cells_paths[1], columns=["field_id", "cell_id"])
    assert not (loc["cell_id"].to_numpy() == cells["cell_id"].to_numpy()).all()  # shuffled
    expect = cells.merge(loc, on=["field_id", "cell_id"], how="left")[CLASSES.prob_columns]
    got = np.concatenate(
        [
            b.probs
            for b in iter_shard(
                shard,
                columns=["field_id", "cell_id"],
                prob_columns=CLASSES.prob_columns,
                batch_rows=333,
            )
        ]
    )
    np.testing.assert_array_equal(got, expect.to_numpy(np.float32))


# ------------------------------------------------------------------------- unit tests
def test_fdr_and_wilson():
    np.testing.assert_allclose(
        fdr_bh(np.array([0.01, 0.04, 0.03, np.nan, 0.5])),
        [0.04, 0.05333333, 0.05333333, np.nan, 0.5],
    )
    assert wilson_lower(np.array([8]), np.array([10]))[0] == pytest.approx(0.4902, abs=1e-4)


def test_location_calls_rules():
    n_called = np.zeros((3, len(CLASSES)))
    n_called[0, [0, 25]] = [90, 40]  # main nucleoplasm, additional cytosol
    n_called[1, [6]] = [30]  # 30 % only: detected, becomes main (strongest)
    n_called[2, [6]] = [9]  # too few cells
    out = location_calls(
        n_called,
        np.array([100, 100, 10]),
        classes=CLASSES,
        call_min_fraction=0.25,
        main_min_fraction=0.5,
        min_cells=20,
    )
    assert out.loc[0, "main_locations"] == "Nucleoplasm"
    assert out.loc[0, "additional_locations"] == "Cytosol"
    assert out.loc[0, "reliability"] == "high"
    assert out.loc[1, "main_locations"] == "Endoplasmic reticulum"
    assert out.loc[1, "reliability"] == "medium"  # lower bound of 30/100 < 0.25
    assert out.loc[2, "reliability"] == "insufficient"


def test_change_points():
    n = np.full((2, 6), 50.0)
    k = np.array([[2, 3, 1, 40, 42, 39], [10, 12, 9, 11, 10, 12]], float)
    r = change_points(k, n)
    assert r["tau"][0] == 3 and r["effect"][0] == pytest.approx(121 / 150 - 6 / 150)
    assert r["p"][0] < 1e-10 and r["p"][1] > 0.05


def test_cycle_test_null_and_effect():
    rng = np.random.default_rng(0)
    ps = []
    for s in range(30):
        pos = rng.random(300)
        ps.append(cycle_test(rng.normal(size=300), pos, n_perm=199, seed=s)["p"])
    assert np.mean(np.array(ps) < 0.05) <= 0.2
    pos = rng.random(300)
    res = cycle_test(0.5 * pos + 0.2 * rng.normal(size=300), pos, n_perm=199)
    assert res["p"] == pytest.approx(1 / 200) and res["log2fc"] > 0.4


def test_permutations_subset_are_permutations():
    p = permutations_of(7, 50, 0, base_n=100)
    assert p.shape == (50, 7)
    assert (np.sort(p, axis=1) == np.arange(7)).all()


def test_marker_position_follows_phase():
    rng = np.random.default_rng(1)
    theta = rng.random(2000)
    ang = 3 * np.pi / 4 - 2 * np.pi * theta
    g1 = np.exp(np.sin(ang) + 0.05 * rng.normal(size=2000))
    sg2 = np.exp(np.cos(ang) + 0.05 * rng.normal(size=2000))
    est = marker_position(g1, sg2)
    err = np.abs((est - theta + 0.5) % 1.0 - 0.5)
    assert np.median(err) < 0.03


def test_concordance_unit():
    ref = pd.DataFrame(
        {
            "gene": ["A", "B", "C"],
            "locations": [frozenset({0, 25}), frozenset({7, 25}), frozenset({6})],
            "n_images": [2, 1, 1],
        }
    )
    calls = pd.DataFrame(
        {
            "protein": ["a", "B", "C", "D"],
            "cell_line": ["x"] * 4,
            "main_locations": ["Nucleoplasm", "Golgi apparatus", "Mitochondria", "Cytosol"],
            "additional_locations": ["Cytosol", "", "", ""],
        }
    )
    per, cls, summ = concordance(calls, ref, CLASSES)
    assert list(per["agreement"]) == ["full", "partial", "none"]
    assert per["jaccard"].tolist() == pytest.approx([1.0, 0.5, 0.0])
    cyt = cls.set_index("slug").loc["cytosol"]
    assert (cyt["tp"], cyt["fp"], cyt["fn"]) == (1, 0, 1)
    assert cls.set_index("slug").loc["mitochondria", "fp"] == 1
    assert summ["n_proteins_matched"] == 3 and summ["n_proteins_unmatched"] == 1
    assert summ["at_least_one_shared"] == pytest.approx(2 / 3)


def test_reference_formats(tmp_path):
    p = tmp_path / "ref.csv"
    p.write_text("Id,Target\nG1_1_A1_1,25 0\nG1_2_A1_1,25\nG2_3_B2_1,7\nG2_4_B2_1,6\n")
    ref = read_reference(p, CLASSES).set_index("gene")["locations"]
    assert ref["G1"] == {0, 25} and ref["G2"] == {6, 7}
    maj = read_reference(p, CLASSES, mode="majority").set_index("gene")["locations"]
    assert maj["G1"] == {0, 25} and maj["G2"] == {6, 7}
    q = tmp_path / "ref2.csv"
    q.write_text('gene,locations\nX,"Nucleoplasm;golgi_apparatus"\n')
    assert read_reference(q, CLASSES)["locations"][0] == {0, 7}
    q.write_text("gene,locations\nX,Nowhere\n")
    with pytest.raises(ValueError, match="ref2.csv.*Nowhere"):
        read_reference(q, CLASSES)


def test_real_hpa_reference(shared_data):
    ref = read_reference(shared_data / "hpa_labels" / "hpa_v18.csv", CLASSES)
    by = ref.set_index("gene")["locations"]
    assert by["ENSG00000000003"] == {25}
    assert by["ENSG00000002549"] == {0, 25}
    assert len(ref) > 10_000


# ------------------------------------------------------------------------------ slow
@pytest.mark.slow
@pytest.mark.parametrize("method,key", [("umap", "X_umap"), ("tsne", "X_tsne")])
def test_maps_umap_tsne(tiny, method, key):
    import anndata as ad

    out = _tiny_build(tiny, f"map-{method}", map_method=method)
    a = ad.read_h5ad(out["cells.h5ad"])
    xy = a.obsm[key]
    assert xy.shape == (a.n_obs, 2) and np.isfinite(xy).all()
    # cells of the same most probable location sit together: within-class spread
    # is smaller than the overall spread
    lab = a.obs["top_location"].astype(str).to_numpy()
    big = pd.Series(lab).value_counts().index[0]
    assert xy[lab == big].std(0).mean() < 0.7 * xy.std(0).mean()
    assert Path(out["figures/cells_map_by_location.png"]).stat().st_size > 1000
    shutil.rmtree(Path(out["cells.h5ad"]).parent)


def test_cycle_from_marker_channels(tmp_path):
    sim = simulate_atlas_tables(
        tmp_path / "in",
        n_proteins=40,
        cells_per_field=20,
        n_timepoints=4,
        frac_cycle=0.25,
        fucci_markers=True,
        seed=5,
    )
    out = build_atlas(
        sim.cells_paths,
        sim.localization_paths,
        [],
        str(tmp_path / "out"),
        classes=CLASSES,
        thresholds=sim.thresholds,
        params={
            "map_method": "none",
            "cycle_marker_columns": ["fucci_g1_mean", "fucci_sg2_mean"],
        },
        truth_dir=sim.truth_dir,
    )
    cyc = json.loads(Path(out["evaluation.json"]).read_text())["truth"]["cycle"]
    assert cyc["n_true"] == 10
    assert cyc["recall"] >= 0.9 and cyc["false_discovery_proportion"] <= 0.05
    import anndata as ad

    a = ad.read_h5ad(out["cells.h5ad"])
    assert "X_embedding" not in a.obsm and not any(k.startswith("X_") for k in a.obsm)
    pos = a.obs["cycle_position"].to_numpy()
    assert np.nanmin(pos) >= 0 and np.nanmax(pos) < 1
    assert (a.obs["cycle_phase"] == "G1").mean() > 0.3


def test_predictions_beside_labels_ranks_the_labelled_classes(tmp_path):
    """Per protein: mean probability and rank of each labelled class, streamed by shard."""
    from locatlas.aggregate.labelled import predictions_beside_labels
    from locatlas.classes import load_classes

    classes = load_classes()
    k = len(classes.slugs)
    paths = []
    for s, (protein, labels, hot) in enumerate([("STIM1", "6", 6), ("CCNB1", "25", 0)]):
        n = 4
        cells = pd.DataFrame(
            {
                "field_id": [f"f{s}"] * n,
                "cell_id": np.arange(1, n + 1),
                "protein": protein,
                "cell_line": "U-2 OS",
                "labels": labels,
                "qc_pass": [True, True, True, False],
            }
        )
        probs = np.full((n, k), 0.01, np.float32)
        probs[:, hot] = 0.9
        probs[:, 25] = np.where(hot == 0, 0.5, 0.2)
        loc = pd.DataFrame(probs, columns=classes.prob_columns)
        loc.insert(0, "cell_id", np.arange(1, n + 1))
        loc.insert(0, "field_id", f"f{s}")
        loc["lf_nuclear_fraction"] = [0.1, 0.3, np.nan, 0.9]
        cells.to_parquet(tmp_path / f"cells-{s}.parquet")
        loc.to_parquet(tmp_path / f"loc-{s}.parquet")
        paths.append((tmp_path / f"cells-{s}.parquet", tmp_path / f"loc-{s}.parquet"))
    table = predictions_beside_labels(
        [str(c) for c, _ in paths], [str(x) for _, x in paths], classes
    )
    table = table.set_index("protein")
    assert table.loc["STIM1", "labels"] == "Endoplasmic reticulum"
    assert table.loc["STIM1", "label_rank"] == "1" and table.loc["STIM1", "n_cells"] == 3
    assert table.loc["STIM1", "top_predictions"].startswith("Endoplasmic reticulum 0.90")
    # CCNB1 is labelled cytosol; the model ranks nucleoplasm first, cytosol second
    assert (
        table.loc["CCNB1", "label_rank"] == "2" and table.loc["CCNB1", "label_mean_prob"] == "0.50"
    )
    assert bool(table.loc["CCNB1", "label_in_top"])
    # the failing-QC cell is left out, NaN scores do not count
    assert table.loc["STIM1", "lf_nuclear_fraction"] == pytest.approx(0.2)
