"""The whole chain on the tiny simulated atlas, through Snakemake, checked against truth."""

from __future__ import annotations

import json

import anndata
import numpy as np
import pandas as pd
import pytest

pytestmark = [pytest.mark.workflow]


def test_atlas_outputs_exist(tiny_run):
    atlas = tiny_run / "results" / "atlas"
    for name in ("cells.h5ad", "proteins.parquet", "report.html", "evaluation/evaluation.json"):
        assert (atlas / name).is_file(), name


def test_every_cell_reaches_the_atlas(tiny_run):
    cells = pd.concat(
        [pd.read_parquet(p) for p in sorted((tiny_run / "results" / "cells").glob("*.parquet"))]
    )
    loc = pd.concat(
        [
            pd.read_parquet(p)
            for p in sorted((tiny_run / "results" / "localization").glob("*.parquet"))
        ]
    )
    assert len(cells) > 50
    assert len(loc) == len(cells)
    assert not cells.duplicated(["field_id", "cell_id"]).any()
    adata = anndata.read_h5ad(tiny_run / "results" / "atlas" / "cells.h5ad")
    # the atlas holds the cells that pass QC and do not touch the field edge
    usable = cells["qc_pass"].astype(bool) & ~cells["edge"].astype(bool)
    assert adata.n_obs == int(usable.sum()) > 20
    assert "X_umap" in adata.obsm and adata.obsm["X_umap"].shape == (adata.n_obs, 2)
    probs = loc.filter(like="p_").to_numpy()
    assert np.all((probs >= 0) & (probs <= 1))


def test_segmentation_matches_truth(tiny_run):
    ev = json.loads((tiny_run / "results" / "atlas" / "evaluation" / "evaluation.json").read_text())
    assert ev["nuclei_f1"] >= 0.85, ev
    assert ev["cells_f1"] >= 0.7, ev


def test_report_has_the_accuracy_and_quarantine_sections(tiny_run):
    html = (tiny_run / "results" / "atlas" / "report.html").read_text()
    for title in ("Accuracy against ground truth", "Quarantine", "Provenance", "Field QC"):
        assert title in html


def _localize_runtimes(dry_run_output: str) -> dict[str, int]:
    """shard -> runtime (minutes) of each localize job in a dry run's job list."""
    out = {}
    for block in dry_run_output.split("rule localize:")[1:]:
        shard = block.split("wildcards: shard=")[1].split()[0]
        out[shard] = int(block.split("runtime=")[1].split(",")[0])
    return out


def test_localize_runtime_is_predicted_from_the_shard_cells(tiny_run, tmp_path):
    """A localize job asks SLURM for minutes in proportion to its shard's cells (read
    from the segment table's footer once it exists), not a fixed allowance per field:
    1 minute per field had asked 8.4 hours for a 500-field shard that runs in minutes."""
    import math
    import shutil

    from workflow_utils import snakemake

    work = tmp_path / "run"
    shutil.copytree(tiny_run, work, symlinks=True)
    cells = sorted((work / "results" / "cells").glob("shard-*.parquet"))
    crowded, unreadable = (
        p.name.removeprefix("shard-").removesuffix(".parquet") for p in cells[:2]
    )
    pd.DataFrame({"cell_id": np.arange(100_000, dtype=np.int32)}).to_parquet(cells[0])
    cells[1].write_bytes(b"not a parquet file")
    proc = snakemake(work, "--dry-run", "--forcerun", "localize")
    runtimes = _localize_runtimes(proc.stdout)
    assert set(runtimes) == {p.name[6:-8] for p in cells}

    def minutes(n_cells: int) -> int:  # localize_runtime(0.004 s per cell), 2 threads
        return 5 + math.ceil(3 * n_cells * 0.004 / 60 / 2)

    assert runtimes[crowded] == minutes(100_000) == 15
    for path in cells[2:]:
        shard = path.name[6:-8]
        assert runtimes[shard] == minutes(len(pd.read_parquet(path))) < 15
    # an unreadable table does not stop the workflow: fields x megapixels (0.05 s/Mpx)
    shards = pd.read_csv(work / "results/manifest/shards.tsv", sep="\t", dtype={"shard": str})
    row = shards.set_index("shard").loc[unreadable]
    work_s = row["n_fields"] * row["max_field_mpx"] * 0.05
    assert runtimes[unreadable] == 5 + math.ceil(3 * work_s / 60 / 2)
