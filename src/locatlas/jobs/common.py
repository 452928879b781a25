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


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
