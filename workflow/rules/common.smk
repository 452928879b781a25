# Shared helpers: where things are, which shards and plates exist, stage parameters.
import json
import math
from functools import lru_cache
from pathlib import Path

import pandas as pd

RESULTS = config["results"].rstrip("/")
SIM_DIR = f"{RESULTS}/simulated"
MANIFEST_DIR = f"{RESULTS}/manifest"
ZARR_ROOT = f"{RESULTS}/zarr"


wildcard_constraints:
    shard=r"[A-Za-z0-9.\-]+-\d{5}",
    plate=r"[A-Za-z0-9.\-]+",


def samples_path():
    if config["input"]["simulate"]:
        return f"{SIM_DIR}/samplesheet.csv"
    if not config["input"]["samples"]:
        raise ValueError(
            "config key 'input.samples': set a sample sheet or folder, or input.simulate"
        )
    return config["input"]["samples"]


def samples_is_url():
    from locatlas.remote import is_url  # the rule ingest itself applies

    return is_url(samples_path())


def samples_input(wildcards):
    """The ingest rule's input: the local sheet or folder. A URL (``s3://...``) is not
    a file Snakemake can date, so it goes in as a parameter (see samples_listing)."""
    return [] if samples_is_url() else samples_path()


def samples_listing(wildcards):
    """For URL input, a digest of the objects' names, sizes and ETags: a new or changed
    object changes this parameter, and Snakemake reruns ingest (one listing per DAG)."""
    if not samples_is_url():
        return ""
    from locatlas.watch import input_fingerprint

    return input_fingerprint(samples_path())


def truth_dir():
    if config["input"]["truth"]:
        return config["input"]["truth"]
    if config["input"]["simulate"]:
        return f"{SIM_DIR}/truth"
    return None


def params_json(*keys, only=None):
    """The config section(s) a rule passes to the CLI, as one JSON object; `only` keeps
    the keys the rule uses, so that other keys' changes do not rerun it."""
    section = config
    for key in keys:
        section = section[key]
    if only is not None:
        section = {k: v for k, v in section.items() if k in only}
    return json.dumps(section, sort_keys=True)


@lru_cache(maxsize=4)
def _shard_table(path, mtime):
    return pd.read_csv(path, sep="\t", dtype={"shard": str, "plate": str})


def shard_table():
    """The shard list written by the ingest checkpoint (read once per DAG evaluation)."""
    path = checkpoints.ingest.get().output.shards
    return _shard_table(path, Path(path).stat().st_mtime)


def shards():
    return list(shard_table()["shard"])


def plates():
    return sorted(shard_table()["plate"].unique())


def shards_of_plate(plate):
    t = shard_table()
    return list(t.loc[t["plate"] == plate, "shard"])


def training_shards():
    t = shard_table()
    return list(t.loc[t["n_train"] > 0, "shard"])


def shard_manifest(wildcards):
    return f"{MANIFEST_DIR}/shards/{wildcards.shard}.parquet"


def plate_of(wildcards):
    t = shard_table()
    return t.loc[t["shard"] == wildcards.shard, "plate"].iloc[0]


def shard_fields(wildcards):
    t = shard_table()
    return int(t.loc[t["shard"] == wildcards.shard, "n_fields"].iloc[0])


def shard_mpx(wildcards):
    """Megapixels of the shard's largest field (all channels, planes, time points)."""
    t = shard_table()
    row = t.loc[t["shard"] == wildcards.shard].iloc[0]
    return float(row.get("max_field_mpx", 16.0))


def mem_mb_for(per_mpx_mb, base_mb):
    """Memory predicted from the largest field: stages hold a few copies of one field
    per thread, so memory scales with field size, not with shard size."""

    def mem(wildcards, threads):
        return int(base_mb + per_mpx_mb * shard_mpx(wildcards) * max(1, threads))

    return mem


def train_mem_mb():
    """The train job holds at most localize.train.max_cells crops and masks (float16
    image channels, uint8 masks) plus a fixed allowance for torch and the model."""
    max_cells = config["localize"]["train"].get("max_cells")
    if max_cells is None:
        return 16000  # all labelled cells: size the request by hand for a large atlas
    side = int(config["segment"]["crop_size_px"])
    cell_bytes = (2 * 4 + 2) * side * side  # four roles at most, two masks
    return int(3000 + 1.3 * max_cells * cell_bytes / 1e6)


def minutes_for(work_s, threads, base_min):
    """A runtime request in minutes: start-up plus 3x the predicted CPU seconds, shared
    by the job's threads."""
    return int(base_min + math.ceil(3 * work_s / 60 / max(1, threads)))


def runtime_for(seconds_per_mpx, base_min=2):
    """Minutes predicted from the shard's fields and field size (with a 3x margin)."""

    def runtime(wildcards, threads):
        work = shard_fields(wildcards) * shard_mpx(wildcards) * seconds_per_mpx
        return minutes_for(work, threads, base_min)

    return runtime


def parquet_rows(path):
    """Rows of a parquet table from its footer; None before it exists (a dry run) or
    where it cannot be read (the job itself then says why; a resource estimate must not
    stop the workflow)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_metadata(path).num_rows
    except (OSError, pa.ArrowException):
        return None


def localize_runtime(seconds_per_cell, seconds_per_mpx, base_min=5):
    """Minutes for a localize job (with a 3x margin): from the shard's cells once
    segment has written their table (Snakemake re-evaluates resources when a job is
    ready), before that from fields x megapixels. Test-time augmentation is 8 passes."""
    passes = 8 if config["localize"].get("tta") else 1

    def runtime(wildcards, input, threads):
        cells = parquet_rows(input.cells)
        if cells is None:
            work = shard_fields(wildcards) * shard_mpx(wildcards) * seconds_per_mpx
        else:
            work = cells * seconds_per_cell
        return minutes_for(passes * work, threads, base_min)

    return runtime


def clear_example_inputs():
    example = config["clear"].get("example_stack")
    if (
        example
        and Path(example).exists()
        and Path(example).with_suffix(".psf.json").exists()
    ):
        return {"image": example, "psf": str(Path(example).with_suffix(".psf.json"))}
    return {}


def atlas_targets():
    return [
        f"{RESULTS}/atlas/cells.h5ad",
        f"{RESULTS}/atlas/proteins.parquet",
        f"{RESULTS}/atlas/report.html",
    ]


def config_digest():
    import hashlib

    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def model_package():
    """A user's local model package, or the one the train rule makes."""
    if config["localize"].get("model"):
        return config["localize"]["model"]
    return f"{RESULTS}/model/package"


def per_shard(pattern):
    return lambda w: expand(pattern, shard=shards())


def optional_truth_inputs(w):
    return (
        {"evaluation": f"{RESULTS}/atlas/evaluation/evaluation.json"}
        if truth_dir()
        else {}
    )


def optional_clearing_figure(w):
    if clear_example_inputs():
        return {"clearing_figure": f"{RESULTS}/atlas/figures/clearing_example.png"}
    return {}


def model_input():
    """The model dependency: the user's package, or the train rule's output folder."""
    if config["localize"].get("model"):
        return config["localize"]["model"]
    return f"{RESULTS}/model"
