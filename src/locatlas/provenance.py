"""Provenance: what produced an output (package version, git commit, config and model hashes)."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path

from . import __version__

_REPO = Path(__file__).resolve().parents[2]


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit of the locatlas checkout this code runs from ("unknown" outside git)."""
    if env := os.environ.get("LOCATLAS_GIT_COMMIT"):
        return env
    try:
        out = subprocess.run(
            ["git", "-C", str(_REPO), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        commit = out.stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(_REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(*, config_hash: str | None = None, **extra: str) -> dict[str, str]:
    """A flat dict of provenance fields, stable within one checkout and config.

    Deliberately free of timestamps and host names so that reruns are byte-identical.
    """
    record = {
        "locatlas_version": __version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
    }
    if config_hash is not None:
        record["config_hash"] = config_hash
    record.update({k: str(v) for k, v in extra.items()})
    return record
