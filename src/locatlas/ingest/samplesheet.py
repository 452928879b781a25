"""Sample sheets: read a CSV/TSV, coerce types, validate each row against the schema.

The schema (JSON Schema in YAML) is ``workflow/schemas/samplesheet.schema.yaml``; it
documents every column. A sheet-level problem (unreadable file, no ``source``
column) raises :class:`SampleSheetError`; a bad row is returned as a quarantine
record naming the sheet, the line, the column and the problem, and the other rows go on.

The sheet may be a URL (``s3://...``, read through fsspec), and its ``source`` cells may
be URLs; a relative source is relative to the sheet's folder (or prefix).
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from locatlas import remote
from locatlas.ingest.quarantine import quarantine_record
from locatlas.remote import UrlPath

log = logging.getLogger("locatlas.ingest")

SCHEMA_PATH = (
    Path(__file__).resolve().parents[3] / "workflow" / "schemas" / "samplesheet.schema.yaml"
)

_INT = re.compile(r"^[+-]?\d+(\.0*)?$")
_MISSING = {"", "nan", "NaN", "NA", "N/A", "None", "null"}


class SampleSheetError(ValueError):
    """The sample sheet as a whole cannot be used (names the sheet and the problem)."""


@cache
def load_schema(path: str | None = None) -> dict[str, Any]:
    """The sample-sheet JSON Schema (a dict)."""
    import yaml

    with open(path or SCHEMA_PATH) as fh:
        return yaml.safe_load(fh)


@cache
def _validator(path: str | None = None):
    import jsonschema

    schema = load_schema(path)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


@dataclass(frozen=True)
class SheetRow:
    """A validated sheet row: ``values`` holds only the columns given (typed)."""

    line: int
    values: dict[str, Any]


def _coerce(value: str, kind: str | list) -> Any:
    """Convert a cell to the schema type where it parses; otherwise keep the string
    so that validation reports it."""
    kinds = kind if isinstance(kind, list) else [kind]
    if "integer" in kinds and _INT.match(value):
        return int(float(value))
    if "number" in kinds:
        try:
            f = float(value)
        except ValueError:
            return value
        return f if math.isfinite(f) else value
    return value


def _delimiter(path: Path | UrlPath, first_line: str) -> str:
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".tab"):
        return "\t"
    if suffix == ".csv":
        return ","
    return "\t" if "\t" in first_line else ","


def column_of(error) -> str:
    """The column a jsonschema error is about."""
    if error.path:
        return str(error.path[0])
    if error.validator == "required":
        m = re.match(r"'([^']+)'", error.message)
        if m:
            return m.group(1)
    return "?"


@cache
def _column_validators() -> dict[str, Any]:
    """One validator per column, for that column's subschema."""
    row = _validator()
    return {col: row.evolve(schema=sub) for col, sub in load_schema()["properties"].items()}


@cache
def _cell_errors(column: str, kind: type, value: Any) -> tuple[str, ...]:
    """Schema errors of one cell. The row schema only constrains each column on its
    own (plus ``required``), so a cell's errors do not depend on the rest of its row;
    caching them per distinct value makes large sheets fast (most columns repeat)."""
    del kind  # part of the cache key only: 1 and 1.0 and True must not share an entry
    validator = _column_validators().get(column)
    if validator is None:
        return ()
    return tuple(sorted(f"column '{column}': {e.message}" for e in validator.iter_errors(value)))


def validate_values(values: dict[str, Any]) -> list[str]:
    """Schema errors of one row, each as ``"column 'x': message"`` (empty if valid)."""
    out: list[str] = []
    for req in load_schema().get("required", []):
        if req not in values:
            out.append(f"column '{req}': '{req}' is a required property")
    for column in sorted(values):
        value = values[column]
        try:
            out.extend(_cell_errors(column, type(value), value))
        except TypeError:  # unhashable value: validate without the cache
            out.extend(_cell_errors.__wrapped__(column, type(value), value))
    return out


def _records(path: Path | UrlPath) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) of every non-blank, non-comment row, the header first."""
    try:
        if isinstance(path, UrlPath):
            text = remote.read_text(path, encoding="utf-8-sig")
        else:
            text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise SampleSheetError(f"sample sheet {path}: cannot read: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - an object store's own client errors
        raise SampleSheetError(
            f"sample sheet {path}: cannot read: {remote.describe_error(exc)}"
        ) from None
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")), "")
    if not first:
        raise SampleSheetError(f"sample sheet {path}: no header row (empty sheet)")
    for lineno, rec in enumerate(csv.reader(lines, delimiter=_delimiter(path, first)), 1):
        if rec and any(c.strip() for c in rec) and not rec[0].lstrip().startswith("#"):
            yield lineno, rec


def resolve_source(sheet: Path | UrlPath, src: str) -> str:
    """A ``source`` cell as an absolute path or URL (relative: to the sheet's folder)."""
    if not src or os.path.isabs(src) or remote.is_url(src):
        return src
    if isinstance(sheet, UrlPath):
        return str(sheet.parent / src)
    return os.path.normpath(os.path.join(sheet.parent.absolute(), src))


def sheet_sources(path: str | os.PathLike | UrlPath) -> list[str]:
    """The resolved ``source`` of every row, unvalidated (what a sheet points at).

    Raises :class:`SampleSheetError` for an unreadable or empty sheet; a sheet without
    a ``source`` column gives none.
    """
    path = remote.as_path(path)
    records = _records(path)
    header = [c.strip() for c in next(records)[1]]
    if "source" not in header:
        return []
    k = header.index("source")
    return [
        resolve_source(path, rec[k].strip())
        for _, rec in records
        if len(rec) > k and rec[k].strip()
    ]


def read_samplesheet(
    path: str | os.PathLike | UrlPath,
) -> tuple[list[SheetRow], list[dict[str, str]], list[str]]:
    """Read and validate a sample sheet.

    Returns
    -------
    rows
        Valid rows, in sheet order, with typed values (only non-empty cells).
    quarantine
        Records (see :func:`locatlas.ingest.quarantine.quarantine_record`) for rows that
        could not be parsed or failed validation; ``reason`` names the sheet, line,
        column and problem.
    columns
        The header.

    Raises
    ------
    SampleSheetError
        The sheet is missing, unreadable, empty, lacks the ``source`` column or has
        duplicated column names.
    """
    path = remote.as_path(path)
    header: list[str] | None = None
    schema_props = load_schema()["properties"]
    rows: list[SheetRow] = []
    bad: list[dict[str, str]] = []
    for lineno, rec in _records(path):
        if header is None:
            header = [c.strip() for c in rec]
            dupes = sorted({c for c in header if header.count(c) > 1})
            if dupes:
                raise SampleSheetError(f"sample sheet {path}: duplicated column(s) {dupes}")
            for req in load_schema().get("required", []):
                if req not in header:
                    raise SampleSheetError(
                        f"sample sheet {path}: missing required column '{req}' "
                        f"(columns: {', '.join(header)})"
                    )
            unknown = [c for c in header if c not in schema_props]
            if unknown:
                log.warning("sample sheet %s: ignoring unknown column(s) %s", path, unknown)
            continue
        k = header.index("source")
        src = resolve_source(path, rec[k].strip()) if len(rec) > k else ""
        where = f"{path}:{lineno}"
        if len(rec) != len(header):
            bad.append(
                quarantine_record(
                    src or where,
                    f"sample sheet {where} (source {src!r}): row has {len(rec)} fields but the header has "
                    f"{len(header)} (unquoted delimiter or missing value?)",
                    error_type="bad-sheet-row",
                )
            )
            continue
        values: dict[str, Any] = {}
        for col, cell in zip(header, rec, strict=True):
            if col not in schema_props:
                continue
            cell = cell.strip()
            if cell in _MISSING:
                continue
            values[col] = _coerce(cell, schema_props[col].get("type", "string"))
        errors = validate_values(values)
        if errors:
            bad.append(
                quarantine_record(
                    src or where,
                    f"sample sheet {where} (source {src!r}): " + "; ".join(errors),
                    error_type="bad-sheet-row",
                )
            )
            continue
        rows.append(SheetRow(lineno, values))
    if header is None:
        raise SampleSheetError(f"sample sheet {path}: no header row (empty sheet)")
    return rows, bad, header
