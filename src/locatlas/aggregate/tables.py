"""Out-of-core reading of the per-shard cell and localization tables.

A shard's cells parquet and localization parquet are streamed together in record
batches (``pyarrow.parquet.ParquetFile.iter_batches``); only the columns needed are
read, strings come back dictionary-encoded (pandas categoricals), and at most one
batch of cells is in memory at a time. When the localization rows are in the same
``(field_id, cell_id)`` order as the cells (the usual case) both files are streamed in
step; otherwise the shard's probabilities alone (N x 28 float32) are loaded and
joined on the keys. Embedding rows (``.npy``, memory-mapped) follow the localization
row order, so each cell carries its localization row index ``loc_row``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

#: Columns every cells table must have.
REQUIRED_CELL_COLUMNS = (
    "field_id",
    "cell_id",
    "plate",
    "well",
    "timepoint",
    "protein",
    "cell_line",
)
#: Columns read when present (the rest of the cells table is ignored).
OPTIONAL_CELL_COLUMNS = (
    "field",
    "split",
    "labels",
    "qc_pass",
    "edge",
    "centroid_y_um",
    "centroid_x_um",
    "cell_area_um2",
    "nucleus_area_um2",
    "nucleus_integrated",
)
#: String columns read dictionary-encoded.
STRING_COLUMNS = ("field_id", "plate", "well", "protein", "cell_line", "split", "labels")


class AggregateInputError(ValueError):
    """A cells/localization/embedding input is missing or malformed (names the file)."""


@dataclass(frozen=True)
class ShardInput:
    """One shard's three inputs."""

    index: int
    cells: str
    localization: str
    embeddings: str | None


@dataclass
class CellBatch:
    """A batch of cells with their class probabilities.

    Attributes
    ----------
    cells
        The requested cells columns (strings as categoricals), ``n`` rows.
    probs
        ``(n, C)`` float32 class probabilities, columns in class order (NaN rows
        where a cell has no localization row).
    loc_row
        ``(n,)`` int64 row of each cell in the localization table (= embedding row),
        -1 when missing.
    shard
        Shard index (position in the input lists).
    start
        Row offset of this batch in the shard's cells table.
    """

    cells: pd.DataFrame
    probs: np.ndarray
    loc_row: np.ndarray
    shard: int
    start: int


def make_shard_inputs(
    cells_paths: Sequence[str | os.PathLike],
    localization_paths: Sequence[str | os.PathLike],
    embedding_paths: Sequence[str | os.PathLike] | None,
) -> list[ShardInput]:
    """Pair the per-shard inputs; lists must be in the same shard order."""
    cells_paths = [str(p) for p in cells_paths]
    localization_paths = [str(p) for p in localization_paths]
    if len(cells_paths) != len(localization_paths):
        raise AggregateInputError(
            f"{len(cells_paths)} cells tables but {len(localization_paths)} localization tables"
        )
    if not cells_paths:
        raise AggregateInputError("no cells tables given")
    emb: list[str | None]
    if embedding_paths:
        emb = [str(p) for p in embedding_paths]
        if len(emb) != len(cells_paths):
            raise AggregateInputError(
                f"{len(emb)} embedding files but {len(cells_paths)} cells tables"
            )
    else:
        emb = [None] * len(cells_paths)
    return [
        ShardInput(i, c, loc, e)
        for i, (c, loc, e) in enumerate(zip(cells_paths, localization_paths, emb, strict=True))
    ]


def _schema(path: str) -> pa.Schema:
    if not Path(path).is_file():
        raise AggregateInputError(f"{path}: file not found")
    try:
        return pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise AggregateInputError(f"{path}: not a readable parquet file ({exc})") from exc


def check_shard(shard: ShardInput, prob_columns: Sequence[str]) -> dict[str, int]:
    """Validate one shard's schemas and sizes; return row counts.

    Raises
    ------
    AggregateInputError
        Naming the file: missing file, missing columns, embedding rows that do not
        match the localization rows.
    """
    cs = _schema(shard.cells)
    missing = [c for c in REQUIRED_CELL_COLUMNS if c not in cs.names]
    if missing:
        raise AggregateInputError(f"{shard.cells}: missing required column(s) {missing}")
    ls = _schema(shard.localization)
    missing = [c for c in ("field_id", "cell_id", *prob_columns) if c not in ls.names]
    if missing:
        raise AggregateInputError(f"{shard.localization}: missing column(s) {missing}")
    n_cells = pq.ParquetFile(shard.cells).metadata.num_rows
    n_loc = pq.ParquetFile(shard.localization).metadata.num_rows
    if shard.embeddings is not None:
        emb = open_embeddings(shard.embeddings)
        if emb.shape[0] != n_loc:
            raise AggregateInputError(
                f"{shard.embeddings}: {emb.shape[0]} embedding rows but "
                f"{n_loc} rows in {shard.localization}"
            )
    return {"cells": n_cells, "localization": n_loc}


def open_embeddings(path: str) -> np.ndarray:
    """Memory-map an ``(N, D)`` float embedding ``.npy`` file (read only)."""
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise AggregateInputError(f"{path}: cannot read embeddings ({exc})") from exc
    if arr.ndim != 2:
        raise AggregateInputError(f"{path}: embeddings must be 2-D (N, D), got {arr.shape}")
    return arr


def _to_pandas(batch: pa.RecordBatch | pa.Table) -> pd.DataFrame:
    return batch.to_pandas(strings_to_categorical=True, split_blocks=True, self_destruct=True)


def _key_frame(path: str) -> pd.DataFrame:
    t = pq.read_table(path, columns=["field_id", "cell_id"], read_dictionary=["field_id"])
    return pd.DataFrame(
        {
            "field_id": np.asarray(t.column("field_id").to_pandas().astype(str)),
            "cell_id": t.column("cell_id").to_numpy(),
        }
    )


def localization_order(shard: ShardInput) -> np.ndarray | None:
    """Row of each cell in the localization table, or ``None`` when rows align.

    Raises
    ------
    AggregateInputError
        When the localization table has duplicate ``(field_id, cell_id)`` keys.
    """
    a = pq.read_table(shard.cells, columns=["field_id", "cell_id"])
    b = pq.read_table(shard.localization, columns=["field_id", "cell_id"])
    if a.num_rows == b.num_rows:
        fa, fb = a.column("field_id"), b.column("field_id")
        if pa.types.is_dictionary(fa.type):
            fa = fa.cast(pa.string())
        if pa.types.is_dictionary(fb.type):
            fb = fb.cast(pa.string())
        ca, cb = a.column("cell_id"), b.column("cell_id")
        if fa.equals(fb) and ca.cast(pa.string()).equals(cb.cast(pa.string())):
            return None
    del a, b
    ka = _key_frame(shard.cells)
    kb = _key_frame(shard.localization)
    kb["cell_id"] = kb["cell_id"].astype(ka["cell_id"].dtype, copy=False)
    if kb.duplicated().any():
        dup = kb[kb.duplicated()].iloc[0]
        raise AggregateInputError(
            f"{shard.localization}: duplicate cell key (field_id={dup['field_id']!r}, "
            f"cell_id={dup['cell_id']!r})"
        )
    kb["_row"] = np.arange(len(kb), dtype=np.int64)
    merged = ka.merge(kb, on=["field_id", "cell_id"], how="left", sort=False)
    return merged["_row"].fillna(-1).to_numpy(np.int64)


class _RowStream:
    """Hands out exactly ``n`` rows at a time from a parquet file's batches."""

    def __init__(self, path: str, columns: list[str], batch_rows: int):
        self._it = pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns)
        self._buf: list[pa.RecordBatch] = []
        self._have = 0

    def take(self, n: int) -> pa.Table:
        while self._have < n:
            b = next(self._it)
            self._buf.append(b)
            self._have += b.num_rows
        t = pa.Table.from_batches(self._buf)
        head, rest = t.slice(0, n), t.slice(n)
        self._buf = rest.to_batches()
        self._have = rest.num_rows
        return head


def _probs_matrix(table: pa.Table, prob_columns: Sequence[str]) -> np.ndarray:
    out = np.empty((table.num_rows, len(prob_columns)), np.float32)
    for j, c in enumerate(prob_columns):
        out[:, j] = table.column(c).to_numpy(zero_copy_only=False)
    return out


def iter_shard(
    shard: ShardInput,
    *,
    columns: Sequence[str],
    prob_columns: Sequence[str],
    batch_rows: int,
) -> Iterator[CellBatch]:
    """Stream one shard as :class:`CellBatch` es of at most ``batch_rows`` cells.

    ``columns`` are the cells columns to read (those absent from the file are
    skipped); the caller checks what it needs with :func:`check_shard` first.
    """
    schema = _schema(shard.cells)
    cols = [c for c in dict.fromkeys(columns) if c in schema.names]
    dict_cols = [c for c in cols if c in STRING_COLUMNS]
    pf = pq.ParquetFile(shard.cells, read_dictionary=dict_cols)
    order = localization_order(shard)
    if order is None:
        stream = _RowStream(shard.localization, list(prob_columns), batch_rows)
        all_probs = None
    else:
        t = pq.read_table(shard.localization, columns=list(prob_columns))
        all_probs = _probs_matrix(t, prob_columns)
        del t
    start = 0
    for rb in pf.iter_batches(batch_size=batch_rows, columns=cols):
        n = rb.num_rows
        if order is None:
            probs = _probs_matrix(stream.take(n), prob_columns)
            loc_row = np.arange(start, start + n, dtype=np.int64)
        else:
            loc_row = order[start : start + n]
            probs = all_probs[np.maximum(loc_row, 0)]
            probs[loc_row < 0] = np.nan
        yield CellBatch(_to_pandas(rb), probs, loc_row, shard.index, start)
        start += n


def iter_columns(
    shard: ShardInput, columns: Sequence[str], batch_rows: int
) -> Iterator[pd.DataFrame]:
    """Stream a few cells columns of one shard (no localization), e.g. for counting."""
    schema = _schema(shard.cells)
    cols = [c for c in dict.fromkeys(columns) if c in schema.names]
    dict_cols = [c for c in cols if c in STRING_COLUMNS]
    pf = pq.ParquetFile(shard.cells, read_dictionary=dict_cols)
    for rb in pf.iter_batches(batch_size=batch_rows, columns=cols):
        yield _to_pandas(rb)


def usable_mask(cells: pd.DataFrame, *, use_qc: bool, drop_edge: bool) -> np.ndarray:
    """Cells that enter the atlas: QC passed and not touching the border."""
    keep = np.ones(len(cells), bool)
    if use_qc and "qc_pass" in cells:
        keep &= cells["qc_pass"].fillna(False).to_numpy(bool)
    if drop_edge and "edge" in cells:
        keep &= ~cells["edge"].fillna(False).to_numpy(bool)
    return keep


# ----------------------------------------------------------------------------- hashing
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (vectorised, wraps modulo 2**64)."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= _M1
        x ^= x >> np.uint64(27)
        x *= _M2
        x ^= x >> np.uint64(31)
    return x


def cell_uniform(field_id: pd.Series, cell_id: pd.Series, salt: int) -> np.ndarray:
    """A reproducible uniform number in [0, 1) per cell, from its key and a salt.

    The same cell gets the same number in every run, shard layout and batch size,
    which makes every sample below reproducible and independent of reading order.
    """
    cat = field_id.astype("category") if field_id.dtype != "category" else field_id
    cats = cat.cat.categories.astype(str).to_numpy(dtype=object)
    fh = pd.util.hash_array(cats, hash_key="locatlas-aggr-01")
    h = fh[cat.cat.codes.to_numpy()] if len(cats) else np.zeros(len(cat), np.uint64)
    cid = pd.util.hash_array(cell_id.to_numpy(), hash_key="locatlas-aggr-02")
    with np.errstate(over="ignore"):
        x = _mix64(h ^ _mix64(cid + np.uint64(salt & 0xFFFFFFFF)))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)
