"""The quarantine table: bad input, one row per problem, never silently dropped."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pandas as pd

from locatlas.ingest.errors import IngestError

#: Columns of every quarantine table (ingest, normalize and later stages).
QUARANTINE_COLUMNS = ("source", "field_id", "stage", "reason", "error_type")


def quarantine_record(
    source: str, reason: str, *, error_type: str, field_id: str = "", stage: str = "ingest"
) -> dict[str, str]:
    """One quarantine row. ``reason`` should name the file and the problem."""
    return {
        "source": str(source),
        "field_id": str(field_id or ""),
        "stage": stage,
        "reason": str(reason),
        "error_type": error_type,
    }


def record_from_error(
    exc: IngestError, *, source: str | None = None, field_id: str = "", stage: str = "ingest"
) -> dict[str, str]:
    """A quarantine row from an :class:`IngestError` (its message names the file).

    Normalization can use this to quarantine a field whose pixels
    :func:`locatlas.ingest.read_field_pixels` refused.
    """
    return quarantine_record(
        source if source is not None else exc.path,
        str(exc),
        error_type=exc.error_type,
        field_id=field_id,
        stage=stage,
    )


def quarantine_frame(records: Iterable[Mapping[str, str]]) -> pd.DataFrame:
    """A quarantine DataFrame with :data:`QUARANTINE_COLUMNS`, deterministically sorted."""
    df = pd.DataFrame(list(records), columns=list(QUARANTINE_COLUMNS))
    df = df.astype(str)
    df = df.drop_duplicates().sort_values(list(QUARANTINE_COLUMNS), kind="stable")
    return df.reset_index(drop=True)
