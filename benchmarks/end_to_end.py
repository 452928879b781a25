"""Fields per core-hour through all six stages on 4 x 2048² simulated fields.

32 fields of the simulator's `benchmark` preset (2048² px at 0.2 µm/px, 4 channels,
16 proteins on each of two plates), one shard of 16 fields per plate. Each job's
fixed start-up (Python, torch and zarr imports, model load) is shared by the fields
of its shard: the table also prints it per job, measured in the same run, and spreads
it over 128-field shards. That derived figure is a lower bound (other per-job costs,
such as the kernel's first touch of a job's memory, shrink too); ``--per-plate 128``
measures it.

Runs the whole workflow (simulate -> ingest -> normalize -> clear -> segment ->
train -> localize -> aggregate) on the simulator's `benchmark` preset in a scratch
folder, then reads the CPU time every job logs of itself at exit (getrusage: all its
threads, exact) and reports CPU seconds per field for each per-field stage. (Snakemake's
benchmark files poll every 0.5 s and miss each job's last interval; their figure is
printed beside it, as ``polled_cpu_s``.) Model training is a one-off per model and is shown
separately, not counted per field. Baseline measured in the same run: decoding the
same fields' TIFF files (the least any pipeline must do).

    python benchmarks/end_to_end.py                  # target: >= 3,600 fields per core-hour
    python benchmarks/end_to_end.py --per-plate 8    # 16 fields, quicker
    python benchmarks/end_to_end.py --per-plate 128  # 256 fields, 2 per well past 96
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import tifffile

from locatlas.jobs.common import RESOURCES_PREFIX, parse_resources

REPO = Path(__file__).resolve().parents[1]
PER_FIELD = ["flatfield", "normalize", "plate_metadata", "clear", "segment", "localize"]
THREADED = ["normalize", "clear", "segment", "localize"]
ONCE = ["simulate", "ingest", "train", "evaluate", "aggregate"]
WELLS_PER_PLATE = 96  # the simulator's plates


def plate_layout(per_plate: int) -> tuple[int, int]:
    """(proteins, fields per well) for ``per_plate`` fields on a plate: one protein per
    well of a 96-well plate, more fields per well past 96."""
    for per_well in range(1, per_plate):
        if per_plate % per_well == 0 and per_plate // per_well <= WELLS_PER_PLATE:
            return per_plate // per_well, per_well
    return 1, per_plate


def run(work: Path, cores: int, per_plate: int, threads: int | None = None) -> float:
    config = work / "bench.yaml"
    proteins, per_well = plate_layout(per_plate)
    layout = f"{{n_proteins: {proteins}, fields_per_well: {per_well}}}"
    # one shard per plate: each job's start-up is shared by `per_plate` fields here,
    # by 100-500 in a cluster run
    config.write_text(
        "input:\n  simulate:\n    preset: benchmark\n    seed: 11\n"
        f"    params:\n      train: {layout}\n      test: {layout}\n"
        f"shard_size: {per_plate}\nnormalize:\n  flatfield_offset: 100\n"
        "clear:\n  example_stack: null\n"
        "localize:\n  train:\n    epochs: 3\n    min_steps_per_epoch: 8\n"
    )
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    # threads per job of the per-field stages (the rules' own default when None): a
    # cluster packs single-thread jobs as well as multi-thread ones
    set_threads = ["--set-threads", *(f"{r}={threads}" for r in THREADED)] if threads else []
    t0 = time.perf_counter()
    subprocess.run(
        [str(bin_dir / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory",
         str(work), "--configfile", str(config), "--cores", str(cores), "--quiet",
         *set_threads],
        env=env, check=True,
    )  # fmt: skip
    return time.perf_counter() - t0


def stage_cpu(work: Path) -> pd.DataFrame:
    """Wall and CPU seconds per rule. CPU is what each job logged of itself at exit
    (``locatlas.jobs.common.log_resources``: getrusage, exact); Snakemake's benchmark
    files poll every 0.5 s and miss each job's last interval (``polled_cpu_s``, shown
    for comparison)."""
    rows = []
    results = work / "results"
    for tsv in (results / "benchmarks").rglob("*.tsv"):
        rule = tsv.parent.name if tsv.parent.name != "benchmarks" else tsv.stem
        b = pd.read_csv(tsv, sep="\t")
        logged = None
        logfile = results / "logs" / tsv.relative_to(results / "benchmarks").with_suffix(".log")
        if logfile.exists():
            for line in logfile.read_text().splitlines():
                logged = parse_resources(line) or logged
        if rule in PER_FIELD and logged is None:
            raise SystemExit(f"{logfile}: no '{RESOURCES_PREFIX}' line (did the job finish?)")
        cpu = logged["cpu_user_s"] + logged["cpu_sys_s"] if logged else b["cpu_time"].iloc[-1]
        rows.append(
            {"rule": rule, "wall_s": b["s"].iloc[-1], "cpu_s": cpu,
             "polled_cpu_s": b["cpu_time"].iloc[-1]}
        )  # fmt: skip
    return pd.DataFrame(rows).groupby("rule", as_index=False).sum()


def startup_cpu(rule: str, repeats: int = 3) -> float:
    """CPU seconds of a fresh interpreter starting a ``rule`` job: the CLI and the modules
    it preloads for the job (torch for clear and localize), as the job does (best of n)."""
    command = rule.replace("_", "-")  # the CLI command the rule runs
    code = f"from locatlas.cli import preload; preload({command!r})"
    best = float("inf")
    for _ in range(repeats):
        r0 = os.times()
        subprocess.run([sys.executable, "-c", code], check=True)
        r1 = os.times()
        cpu = (r1.children_user - r0.children_user) + (r1.children_system - r0.children_system)
        best = min(best, cpu)
    return best


def decode_baseline(work: Path) -> float:
    files = sorted((work / "results" / "simulated" / "images").rglob("*.tif"))
    t0 = time.process_time()
    for f in files:
        tifffile.imread(f)
    return time.process_time() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--per-plate", type=int, default=16, help="fields per plate (= per shard)")
    ap.add_argument(
        "--threads",
        type=int,
        help="threads per normalize/clear/segment/localize job (default: the rules' own, 2)",
    )
    ap.add_argument("--keep", help="run in this folder and keep it")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        wall = run(work, args.cores, args.per_plate, args.threads)
        n_fields = len(pd.read_parquet(work / "results/manifest/manifest.parquet"))
        cpu = stage_cpu(work)
        decode = decode_baseline(work)
        jobs = {
            rule: len(list((work / "results" / "benchmarks" / rule).glob("*.tsv")))
            for rule in PER_FIELD
        }
    startup = {rule: startup_cpu(rule) for rule in PER_FIELD}
    per_field = cpu[cpu["rule"].isin(PER_FIELD)].copy()
    per_field["jobs"] = per_field["rule"].map(jobs)
    per_field["startup_s_per_job"] = per_field["rule"].map(startup)
    per_field["cpu_s_per_field"] = per_field["cpu_s"] / n_fields
    # the same stage without its jobs' start-up: what a field costs in a big shard, at
    # most (the kernel's first touch of a job's memory is also spread thinner there)
    per_field["marginal_s_per_field"] = (
        per_field["cpu_s"] - per_field["jobs"] * per_field["startup_s_per_job"]
    ).clip(lower=0) / n_fields
    total = per_field["cpu_s_per_field"].sum()
    fph = 3600.0 / total
    fph_big = 3600.0 / (
        per_field["marginal_s_per_field"].sum()
        + (per_field["startup_s_per_job"] / 128.0).sum()  # one job per 128-field shard
    )
    base = 3600.0 / max(decode / n_fields, 1e-9)
    per_job = f"{args.threads} thread(s)" if args.threads else "the rules' threads"
    print(
        f"{n_fields} fields of 4 x 2048² uint16, workflow wall {wall:.0f} s on {args.cores} "
        f"cores, {per_job} per job\n"
    )
    cols = ["rule", "jobs", "cpu_s", "polled_cpu_s", "startup_s_per_job", "cpu_s_per_field",
            "marginal_s_per_field"]  # fmt: skip
    print(per_field[cols].round(2).to_string(index=False))
    once = cpu[cpu["rule"].isin(ONCE)]
    print("\none-off steps (not per field):")
    print(once[["rule", "wall_s", "cpu_s"]].round(1).to_string(index=False))
    table = pd.DataFrame(
        [
            {"what": "TIFF decode only (baseline)", "fields_per_core_hour": round(base)},
            {
                "what": f"locatlas, normalize..localize ({args.per_plate}-field shards)",
                "fields_per_core_hour": round(fph),
            },
            {
                "what": "  same, start-up spread over 128-field shards (a lower bound)",
                "fields_per_core_hour": round(fph_big),
            },
        ]
    )
    table["ratio_to_baseline"] = (table["fields_per_core_hour"] / base).round(4)
    print()
    print(table.to_string(index=False))
    ok = fph >= 3600
    print(
        f"\ntarget >= 3,600 fields per core-hour: {'PASS' if ok else 'FAIL'} "
        f"({fph:,.0f} measured; at least {fph_big:,.0f} in 128-field shards)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
