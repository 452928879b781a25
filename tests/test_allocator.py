"""The allocator setting that lets a job reuse freed field arrays (glibc only)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from locatlas.allocator import keep_freed_memory

# Allocate and free a 64 MiB array; print how much of it the process still holds.
_PROBE = """
import numpy as np
from locatlas.allocator import keep_freed_memory

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

applied = keep_freed_memory()
before = rss_mb()
a = np.ones(64 << 17)  # 64 MiB of float64, touched
del a
print(applied, rss_mb() - before)
"""


def _probe(keep: str) -> tuple[bool, float]:
    env = {**os.environ, "LOCATLAS_KEEP_FREED_MEMORY": keep}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, check=True, capture_output=True, text=True
    ).stdout.split()
    return out[0] == "True", float(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_freed_field_arrays_stay_with_the_process_for_reuse():
    applied, held_mb = _probe("1")
    if not applied:
        pytest.skip("libc without mallopt (not glibc)")
    assert held_mb > 60  # the freed 64 MiB stays mapped, ready for the next field
    applied, held_mb = _probe("0")
    assert not applied
    assert held_mb < 8  # glibc's default: the block is unmapped at free


def test_setting_is_off_where_the_site_turns_it_off(monkeypatch):
    monkeypatch.setenv("LOCATLAS_KEEP_FREED_MEMORY", "0")
    assert keep_freed_memory() is False
