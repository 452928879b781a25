"""Out-of-core atlas aggregation at 10^7 cells: wall time and peak memory.

Generates synthetic per-shard cell + localization tables and embeddings (no images;
``locatlas.aggregate.synthetic``, 50,000 rows per shard, written shard by shard) in a
temporary folder, then measures, each in its own process so that peak RSS
(``ru_maxrss``) belongs to that step alone:

1. baseline: a naive pandas aggregation on the first ~``--baseline-rows`` rows
   (read every cells and localization table whole, concatenate, merge, then
   ``groupby(protein, cell_line, timepoint).mean()`` of the probabilities);
2. ``build_atlas`` on the same shards (everything: statistics, maps, h5ad, report);
3. ``build_atlas`` on all ``--rows`` rows.

At 10^7 rows the cell map is PCA by default (``--map``): UMAP's ``transform`` runs at
~10^4 cells/s here, and cells.h5ad is capped at ``--h5ad-max-cells`` (default 10^6, a
hash-based uniform sample, as ``h5ad_max_cells`` in the config) so the map is applied
to that many cells whatever the method. ``--map umap`` measures the UMAP path.

    python benchmarks/aggregate.py                      # 10^7 rows (~10 min here)
    python benchmarks/aggregate.py --rows 1000000       # quicker
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

ROWS_PER_PROTEIN = 2 * 2 * 5 * 100  # wells x fields x time points x cells per field


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def child_generate(args: argparse.Namespace) -> dict:
    from locatlas.aggregate.synthetic import simulate_atlas_tables

    t = time.perf_counter()
    a = simulate_atlas_tables(
        args.workdir,
        n_proteins=max(1, args.rows // ROWS_PER_PROTEIN),
        wells_per_sample=2,
        fields_per_well=2,
        n_timepoints=5,
        cells_per_field=100,
        poisson_cells=False,
        fields_per_shard=500,
        embedding_dim=args.dim,
        write_truth_cells=False,
        seed=7,
    )
    return {
        "wall_s": time.perf_counter() - t,
        "peak_mb": _peak_mb(),
        "rows": a.n_cells,
        "cells": a.cells_paths,
        "loc": a.localization_paths,
        "emb": a.embedding_paths,
        "truth": a.truth_dir,
        "thresholds": a.thresholds,
    }


def child_naive(args: argparse.Namespace) -> dict:
    import pandas as pd

    from locatlas.classes import load_classes

    spec = json.loads(Path(args.spec).read_text())
    t = time.perf_counter()
    cells = pd.concat([pd.read_parquet(p) for p in spec["cells"]], ignore_index=True)
    loc = pd.concat([pd.read_parquet(p) for p in spec["loc"]], ignore_index=True)
    df = cells.merge(loc, on=["field_id", "cell_id"], how="inner")
    df = df[df["qc_pass"] & ~df["edge"]]
    cols = load_classes().prob_columns
    g = df.groupby(["protein", "cell_line", "timepoint"], observed=True)
    out = g[cols].mean()
    out["n_cells"] = g.size()
    return {"wall_s": time.perf_counter() - t, "peak_mb": _peak_mb(), "rows": len(cells)}


def child_atlas(args: argparse.Namespace) -> dict:
    from locatlas.aggregate import build_atlas
    from locatlas.classes import load_classes

    spec = json.loads(Path(args.spec).read_text())
    t = time.perf_counter()
    out = build_atlas(
        spec["cells"],
        spec["loc"],
        spec["emb"],
        args.out,
        classes=load_classes(),
        thresholds=spec["thresholds"],
        params={"map_method": args.map, "h5ad_max_cells": args.h5ad_max_cells},
        truth_dir=spec["truth"] if args.truth else None,
    )
    wall = time.perf_counter() - t
    ev = json.loads(Path(out["evaluation.json"]).read_text())
    return {
        "wall_s": wall,
        "peak_mb": _peak_mb(),
        "rows": ev["n_rows"],
        "n_cells_h5ad": ev["n_cells_h5ad"],
        "h5ad_mb": Path(out["cells.h5ad"]).stat().st_size / 2**20,
        "truth": ev.get("truth"),
    }


def _run_child(kind: str, extra: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        sys.stderr.write(res.stdout + res.stderr)
        raise SystemExit(f"child {kind} failed ({res.returncode})")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000, help="cell rows to aggregate")
    ap.add_argument("--baseline-rows", type=int, default=1_000_000, help="rows for the baseline")
    ap.add_argument("--dim", type=int, default=16, help="embedding width D")
    ap.add_argument("--map", default="pca", choices=["umap", "tsne", "pca", "none"])
    ap.add_argument("--h5ad-max-cells", type=int, default=1_000_000)
    ap.add_argument("--workdir", default=None, help="keep the data here (default: temp dir)")
    ap.add_argument("--keep", action="store_true", help="do not delete the generated data")
    # internal (child processes)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--truth", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        fn = {"generate": child_generate, "naive": child_naive, "atlas": child_atlas}[args.child]
        print(json.dumps(fn(args)))
        return 0

    work = Path(args.workdir or tempfile.mkdtemp(prefix="locatlas-bench-agg-"))
    try:
        common = ["--rows", str(args.rows), "--dim", str(args.dim)]
        gen = _run_child("generate", [*common, "--workdir", str(work / "in")])
        print(
            f"generated {gen['rows']:,} rows in {len(gen['cells'])} shards: "
            f"{gen['wall_s']:.1f} s, peak {gen['peak_mb']:.0f} MB"
        )
        full = work / "full.json"
        full.write_text(json.dumps(gen))
        # the first shards holding about --baseline-rows rows
        per_shard = gen["rows"] / len(gen["cells"])
        k = max(1, min(len(gen["cells"]), round(args.baseline_rows / per_shard)))
        sub = dict(gen, cells=gen["cells"][:k], loc=gen["loc"][:k], emb=gen["emb"][:k])
        part = work / "part.json"
        part.write_text(json.dumps(sub))
        atlas_args = ["--map", args.map, "--h5ad-max-cells", str(args.h5ad_max_cells)]
        naive = _run_child("naive", ["--spec", str(part)])
        small = _run_child(
            "atlas", ["--spec", str(part), "--out", str(work / "out_small"), *atlas_args]
        )
        big = _run_child(
            "atlas", ["--spec", str(full), "--out", str(work / "out_full"), "--truth", *atlas_args]
        )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    rows = [
        ("naive pandas read-all + groupby", naive),
        ("locatlas build_atlas", small),
        ("locatlas build_atlas", big),
    ]
    print()
    print(
        f"| {'method':34s} | {'rows':>11s} | {'wall s':>8s} | {'rows/s':>9s} | "
        f"{'peak RSS MB':>11s} | {'RSS / naive':>11s} | {'RSS per 1e6 rows':>16s} |"
    )
    print("|" + "|".join("-" * w for w in (36, 13, 10, 11, 13, 13, 18)) + "|")
    for name, r in rows:
        print(
            f"| {name:34s} | {r['rows']:>11,} | {r['wall_s']:>8.1f} | "
            f"{r['rows'] / r['wall_s']:>9,.0f} | {r['peak_mb']:>11.0f} | "
            f"{r['peak_mb'] / naive['peak_mb']:>11.2f} | "
            f"{r['peak_mb'] / (r['rows'] / 1e6):>16.0f} |"
        )
    est = naive["peak_mb"] * big["rows"] / naive["rows"]
    print()
    print(
        f"naive pandas at {big['rows']:,} rows, linear estimate from its run: "
        f"~{est:,.0f} MB peak ({est / big['peak_mb']:.1f}x build_atlas)"
    )
    print(
        f"build_atlas at {big['rows']:,} rows: peak {big['peak_mb']:.0f} MB "
        f"({'within' if big['peak_mb'] <= 4096 else 'OVER'} the 4 GB target); "
        f"map={args.map}, cells.h5ad {big['n_cells_h5ad']:,} cells, {big['h5ad_mb']:.0f} MB"
    )
    if big.get("truth"):
        t = big["truth"]
        print(
            "truth recovery at full size: "
            f"cycle recall {t['cycle']['recall']:.3f}, "
            f"FDP {t['cycle']['false_discovery_proportion']:.3f}; "
            f"translocation recall (onset +-1) {t['translocation']['recall_onset_within_1']:.3f}; "
            f"variability recall {t['variability']['recall']:.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
