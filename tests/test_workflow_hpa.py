"""The two labelled real HPA v18 fields through the whole workflow, calls beside labels.

The fields (STIM1, labelled endoplasmic reticulum; CCNB1, labelled cytosol) are
ingested from their one-JPEG-per-channel layout, normalized, cleared, segmented and
localized with a model package given by path (here the tiny run's; `make demo`
uses the demo's), and the atlas report lists the model's calls and the label-free
scores beside the HPA labels. The tiny model is a smoke-sized one, so this checks
the path, not the accuracy.
"""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

pytestmark = [pytest.mark.workflow]

REPO_SHEET = "config/samples/hpa_v18.csv"


@pytest.fixture(scope="module")
def hpa_run(shared_data, tiny_run, tmp_path_factory):
    from workflow_utils import REPO, snakemake

    root = tmp_path_factory.mktemp("hpa_v18")
    sheet = pd.read_csv(REPO / REPO_SHEET, comment="#")
    sheet["source"] = [str(shared_data / "hpa_fields" / "hpa_v18" / s.rsplit("/", 1)[1])
                       for s in sheet["source"]]  # fmt: skip
    sheet.to_csv(root / "samples.csv", index=False)
    cfg = yaml.safe_load((REPO / "config" / "hpa_v18.yaml").read_text())
    cfg["input"]["samples"] = str(root / "samples.csv")
    cfg["localize"]["model"] = str(tiny_run / "results" / "model" / "package")
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    work = root / "work"
    work.mkdir()
    snakemake(work, config=str(root / "config.yaml"))
    return work / cfg["results"]


def test_real_fields_are_segmented_into_cells(hpa_run):
    cells = pd.concat(pd.read_parquet(p) for p in sorted((hpa_run / "cells").glob("*.parquet")))
    per_protein = cells[cells["qc_pass"].astype(bool)].groupby("protein").size()
    # both fields hold a few dozen U-2 OS-like cells; a broken segmentation gives 0 or hundreds
    assert set(per_protein.index) == {"STIM1", "CCNB1"}
    assert ((per_protein >= 5) & (per_protein <= 200)).all(), per_protein.to_dict()


def test_calls_are_reported_beside_the_hpa_labels(hpa_run):
    table = pd.read_csv(hpa_run / "atlas" / "labels_vs_predictions.csv").set_index("protein")
    assert table.loc["STIM1", "labels"] == "Endoplasmic reticulum"
    assert table.loc["CCNB1", "labels"] == "Cytosol"
    for protein in ("STIM1", "CCNB1"):
        rank = int(table.loc[protein, "label_rank"])
        assert 1 <= rank <= 28
        assert len(table.loc[protein, "top_predictions"].split("; ")) == 3
        assert 0 <= table.loc[protein, "lf_nuclear_fraction"] <= 1
    html = (hpa_run / "atlas" / "report.html").read_text()
    assert "Predictions beside sample-sheet labels" in html
    assert "STIM1" in html and "CCNB1" in html
