"""DAG build time and job count for an atlas-scale manifest (no images needed).

Writes a synthetic 500,000-field manifest as if the ingest checkpoint had run
(plates of 384 wells x 4 fields), then times ``snakemake --dry-run`` of the whole
workflow over it. Baseline in the same run: the same number of fields with one
job per field and stage (what a workflow without shards would ask Snakemake to
schedule), measured on a smaller count and reported per job.

    python benchmarks/dag.py                  # 500,000 fields, shard size 512
    python benchmarks/dag.py --fields 50000   # quicker
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from locatlas.atomic import write_parquet  # noqa: E402
from locatlas.ids import make_field_id, make_shard_id, make_view_id  # noqa: E402
from locatlas.jobs.ingest import shard_table  # noqa: E402

WELLS = [f"{r}{c:02d}" for r in "ABCDEFGHIJKLMNOP" for c in range(1, 25)]  # 384


def synthetic_manifest(n_fields: int, *, fields_per_well: int, shard_size: int) -> pd.DataFrame:
    per_plate = len(WELLS) * fields_per_well
    idx = np.arange(n_fields)
    plate_idx, rest = np.divmod(idx, per_plate)
    well_idx, field = np.divmod(rest, fields_per_well)
    plates = [f"P{p:04d}" for p in plate_idx]
    wells = [WELLS[w] for w in well_idx]
    shard = [make_shard_id(p, r // shard_size) for p, r in zip(plates, rest, strict=True)]
    return pd.DataFrame(
        {
            "field_id": [
                make_field_id(p, w, f + 1, 0) for p, w, f in zip(plates, wells, field, strict=True)
            ],
            "view_id": [
                make_view_id(p, w, f + 1) for p, w, f in zip(plates, wells, field, strict=True)
            ],
            "plate": plates,
            "well": wells,
            "field": field + 1,
            "timepoint": 0,
            "labels": np.where(plate_idx == 0, "0", ""),
            "split": np.where(plate_idx == 0, "train", ""),
            "size_c": 4,
            "size_z": 1,
            "size_y": 2048,
            "size_x": 2048,
            "shard": shard,
        }
    )


def write_checkpoint(work: Path, manifest: pd.DataFrame) -> None:
    """Lay down the ingest checkpoint's outputs so the dry run expands every shard."""
    mdir = work / "results" / "manifest"
    (mdir / "shards").mkdir(parents=True, exist_ok=True)
    sheet = work / "samplesheet.csv"
    sheet.write_text("source,format,plate,well,field\n")
    time.sleep(0.01)
    for shard, rows in manifest.groupby("shard", sort=True):
        # one tiny file per shard stands in for the shard's manifest
        (mdir / "shards" / f"{shard}.parquet").write_bytes(b"")
        del rows
    table = shard_table(manifest.assign(split=manifest["split"]))
    table.to_csv(mdir / "shards.tsv", sep="\t", index=False)
    write_parquet(manifest.head(1), mdir / "manifest.parquet")
    write_parquet(pd.DataFrame({"source": []}), mdir / "quarantine.parquet")
    config = work / "config.yaml"
    config.write_text(
        f"input:\n  samples: {sheet}\nshard_size: 512\nclear:\n  example_stack: null\n"
    )


def dry_run(work: Path) -> tuple[float, int, int]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--dry-run",
            "--quiet",
            "rules",
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",
            str(work),
            "--configfile",
            str(work / "config.yaml"),
            "--cores",
            "1",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"dry run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    m = re.search(r"^total\s+(\d+)", proc.stdout + proc.stderr, re.M)
    jobs = int(m.group(1)) if m else -1
    return seconds, jobs, _peak_rss_children_mb()


def _peak_rss_children_mb() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fields", type=int, default=500_000)
    ap.add_argument("--fields-per-well", type=int, default=4)
    ap.add_argument("--shard-size", type=int, default=512)
    ap.add_argument("--baseline-fields", type=int, default=2_000)
    args = ap.parse_args(argv)

    rows = []
    for label, n, shard_size in (
        ("one job per field (baseline)", args.baseline_fields, 1),
        (f"locatlas shards of {args.shard_size}", args.fields, args.shard_size),
    ):
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            t0 = time.perf_counter()
            manifest = synthetic_manifest(
                n, fields_per_well=args.fields_per_well, shard_size=shard_size
            )
            write_checkpoint(work, manifest)
            prep = time.perf_counter() - t0
            seconds, jobs, rss = dry_run(work)
        rows.append(
            {
                "setup": label,
                "fields": n,
                "jobs": jobs,
                "manifest_s": round(prep, 1),
                "dag_s": round(seconds, 1),
                "ms_per_job": round(1000 * seconds / max(1, jobs), 2),
                "fields_per_dag_s": round(n / seconds),
            }
        )
    df = pd.DataFrame(rows)
    base = df.iloc[0]
    df["dag_s_per_field_vs_baseline"] = (
        (df["dag_s"] / df["fields"]) / (base["dag_s"] / base["fields"])
    ).round(4)
    print(df.to_string(index=False))
    big = df.iloc[-1]
    ok = big["dag_s"] < 60 and 0 < big["jobs"] <= 5000
    print(
        f"\ntarget: < 60 s and <= 5,000 jobs for {big['fields']:,} fields -> {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
