"""Helpers shared by the shard jobs."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..atomic import write_parquet
from ..config import config_hash
from ..provenance import provenance

log = logging.getLogger("locatlas")

QUARANTINE_COLUMNS = ["source", "field_id", "stage", "reason", "error_type"]


def read_manifest(path: str | Path) -> pd.DataFrame:
    return pd.read_parquet(path)


def json_list(value: Any) -> list:
    if isinstance(value, list | tuple | np.ndarray):
        return list(value)
    if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
        return []
    return list(json.loads(value))


def quarantine_frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=QUARANTINE_COLUMNS)
    return df.astype(str).sort_values(["field_id", "source"]).reset_index(drop=True)


def write_receipt(df: pd.DataFrame, path: str | Path, *, params: Any, **extra: str) -> None:
    """The receipt: the job's table plus provenance columns, written last and atomically."""
    df = df.copy()
    for key, value in provenance(config_hash=config_hash(params), **extra).items():
        df[key] = value
    write_parquet(df, path)


@contextmanager
def timed(record: dict, key: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        record[key] = round(time.perf_counter() - t0, 4)


def views(rows: pd.DataFrame) -> list[pd.DataFrame]:
    """Split a shard manifest into its fields of view (all time points together)."""
    rows = rows.sort_values(["view_id", "timepoint"])
    return [g.reset_index(drop=True) for _, g in rows.groupby("view_id", sort=True)]


#: The line a job logs last: its own CPU time and peak memory (:func:`log_resources`).
RESOURCES_PREFIX = "resources:"


def job_resources() -> dict[str, float]:
    """CPU seconds (user, system: all threads, and child processes that were waited
    for) and peak resident memory (MB) of this process so far."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "cpu_user_s": round(own.ru_utime + kids.ru_utime, 3),
        "cpu_sys_s": round(own.ru_stime + kids.ru_stime, 3),
        "max_rss_mb": round(max(own.ru_maxrss, kids.ru_maxrss) / 1024, 1),  # kB on Linux
    }


def log_resources() -> None:
    """Log :func:`job_resources` as JSON after :data:`RESOURCES_PREFIX`. Exact where
    Snakemake's benchmark files are not: they poll every 0.5 s, so a job's last
    interval (a whole short job) is missing from their ``cpu_time``."""
    log.info("%s %s", RESOURCES_PREFIX, json.dumps(job_resources(), sort_keys=True))


def parse_resources(line: str) -> dict[str, float] | None:
    """The resources a :func:`log_resources` line holds; None for any other line."""
    _, sep, rest = line.partition(f" {RESOURCES_PREFIX} ")
    return json.loads(rest) if sep else None


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
