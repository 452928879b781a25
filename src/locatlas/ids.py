"""Stable identifiers: field ids, wells and shards.

A ``field_id`` is derived from (plate, well, field, timepoint) alone, so it is the
same whichever run, machine or shard produced it.
"""

from __future__ import annotations

import re

_WELL = re.compile(r"^([A-Za-z]{1,2})0*(\d{1,3})$")
_SAFE = re.compile(r"[^A-Za-z0-9.-]+")


def safe_name(text: str) -> str:
    """A name usable in paths and zarr keys: letters, digits, '.', '-' only."""
    out = _SAFE.sub("-", str(text)).strip("-")
    if not out:
        raise ValueError(f"cannot make a safe name from {text!r}")
    return out


def parse_well(well: str) -> tuple[str, int]:
    """``'B5'`` or ``'b05'`` -> ``('B', 5)``."""
    m = _WELL.match(str(well).strip())
    if not m:
        raise ValueError(f"not a well name: {well!r} (expected e.g. 'B5' or 'B05')")
    return m.group(1).upper(), int(m.group(2))


def normalize_well(well: str) -> str:
    """Canonical well name: ``'b05'`` -> ``'B05'``."""
    row, col = parse_well(well)
    return f"{row}{col:02d}"


def make_field_id(plate: str, well: str, field: int, timepoint: int = 0) -> str:
    """``('P1', 'B5', 1, 0)`` -> ``'P1_B05_1_t000'``."""
    return f"{safe_name(plate)}_{normalize_well(well)}_{int(field)}_t{int(timepoint):03d}"


def make_view_id(plate: str, well: str, field: int) -> str:
    """A field of view across time points: ``'P1_B05_1'``."""
    return f"{safe_name(plate)}_{normalize_well(well)}_{int(field)}"


def make_shard_id(plate: str, index: int) -> str:
    """Shards are numbered within their plate, so adding a plate adds shards
    without renumbering any existing one."""
    return f"{safe_name(plate)}-{int(index):05d}"
