"""The allocator setting that lets a job reuse freed field arrays (glibc only)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from locatlas.allocator import keep_freed_memory

# Allocate and free a 64 MiB array in the main thread, then again in a worker thread (as
# a field in parallel does); print what the process still holds, and its peak.
_PROBE = """
import threading
import numpy as np
from locatlas.allocator import keep_freed_memory

def rss_mb(key="VmRSS:"):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024

applied = keep_freed_memory()
before = rss_mb()
a = np.ones(64 << 17)  # 64 MiB of float64, touched
del a
main = rss_mb() - before
field = threading.Thread(target=lambda: np.ones(64 << 17).sum())
field.start()
field.join()
print(applied, main, rss_mb("VmHWM:") - before)  # peak: one block or two
"""


def _probe(keep: str) -> tuple[bool, float, float]:
    env = {**os.environ, "LOCATLAS_KEEP_FREED_MEMORY": keep}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, check=True, capture_output=True, text=True
    ).stdout.split()
    return out[0] == "True", float(out[1]), float(out[2])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_freed_field_arrays_stay_with_the_process_for_reuse():
    applied, held_mb, peak_mb = _probe("1")
    if not applied:
        pytest.skip("libc without mallopt (not glibc)")
    assert held_mb > 60  # the freed 64 MiB stays mapped, ready for the next field
    # ... and a field in a worker thread reuses that same block instead of mapping its own
    assert peak_mb < held_mb + 16
    applied, held_mb, _ = _probe("0")
    assert not applied
    assert held_mb < 8  # glibc's default: the block is unmapped at free


def test_setting_is_off_where_the_site_turns_it_off(monkeypatch):
    monkeypatch.setenv("LOCATLAS_KEEP_FREED_MEMORY", "0")
    assert keep_freed_memory() is False
