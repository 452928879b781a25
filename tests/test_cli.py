"""The CLI's start-up (each job's modules imported once, without cyclic collections)
and its last log line (what the job cost)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from locatlas.cli import JOB_MODULES

# In a fresh interpreter (freezing is process-wide): collections run during the
# preload, what got imported, and the collector's state afterwards.
_PROBE = """
import gc, json, sys
from locatlas.cli import JOB_MODULES, preload
before = sum(s["collections"] for s in gc.get_stats())
preload(sys.argv[1])
print(json.dumps({
    "collections": sum(s["collections"] for s in gc.get_stats()) - before,
    "missing": [m for m in JOB_MODULES[sys.argv[1]] if m not in sys.modules],
    "enabled": gc.isenabled(),
    "frozen": gc.get_freeze_count(),
}))
"""


@pytest.mark.parametrize("command", sorted(JOB_MODULES))
def test_preload_imports_a_jobs_modules_without_collections_and_freezes_them(command):
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, command], check=True, capture_output=True, text=True
    ).stdout
    probe = json.loads(out)
    assert probe["missing"] == []
    assert probe["collections"] == 0  # ~550 for torch and the job modules otherwise
    assert probe["enabled"]  # the job's own per-field garbage is still collected
    assert probe["frozen"] > 10_000


def test_every_preloaded_command_exists():
    from locatlas.cli import _HANDLERS

    assert set(JOB_MODULES) <= set(_HANDLERS)


def test_a_job_logs_its_own_cpu_time_and_peak_memory_last():
    from pathlib import Path

    from locatlas.jobs.common import parse_resources

    config = Path(__file__).resolve().parents[1] / "config" / "tiny.yaml"
    run = subprocess.run(
        [sys.executable, "-m", "locatlas", "validate-config", str(config)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    last = run.stderr.strip().splitlines()[-1]
    res = parse_resources(last)
    assert res is not None, run.stderr
    assert set(res) == {"cpu_user_s", "cpu_sys_s", "max_rss_mb"}
    # the interpreter and the CLI's imports alone take tens of ms and tens of MB
    assert res["cpu_user_s"] + res["cpu_sys_s"] > 0.01 and res["max_rss_mb"] > 10
