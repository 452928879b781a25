"""The one exception type of the ingest stage."""

from __future__ import annotations

import os

#: Short machine-readable categories used in the quarantine table's ``error_type``.
ERROR_TYPES = (
    "not-found",
    "not-a-file",
    "empty-file",
    "unsupported-format",
    "extension-mismatch",
    "corrupt",
    "truncated",
    "too-large",
    "missing-channel",
    "shape-mismatch",
    "all-zero",
    "non-finite",
    "duplicate-id",
    "bad-sheet-row",
    "no-pixel-size",
    "bad-scene",
    "changed-since-ingest",
)


class IngestError(ValueError):
    """Bad input data: names the file and says what is wrong with it.

    Parameters
    ----------
    path
        The offending file (or stem / sheet row reference).
    reason
        Human-readable description of the problem.
    error_type
        One of :data:`ERROR_TYPES` (a short category for tables and tests).
    """

    def __init__(self, path: str | os.PathLike, reason: str, error_type: str = "corrupt"):
        self.path = str(path)
        self.reason = str(reason)
        self.error_type = error_type if error_type in ERROR_TYPES else "corrupt"
        super().__init__(f"{self.path}: {self.reason}")
