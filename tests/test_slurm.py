"""The tiny workflow through a real SLURM scheduler equals a local run.

Runs only where a SLURM cluster answers (`.ci/run` starts a one-node cluster with
../shared/peers/slurm/start_slurm.sh); marked `slurm` so the default suite skips it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from workflow_utils import REPO, snakemake

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]


def _cluster_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    proc = subprocess.run(["sinfo", "-h"], capture_output=True, text=True, check=False)
    return proc.returncode == 0 and bool(proc.stdout.strip())


def _tables(root: Path) -> dict[str, bytes]:
    out = {}
    for sub in ("cells", "localization"):
        for p in sorted((root / "results" / sub).glob("*")):
            if p.is_file():
                out[f"{sub}/{p.name}"] = p.read_bytes()
    out["atlas/proteins.parquet"] = (root / "results/atlas/proteins.parquet").read_bytes()
    return out


def test_slurm_run_equals_local_run(tmp_path):
    if not _cluster_up():
        pytest.skip("no SLURM cluster answers `sinfo` (start one with .ci/slurm.sh)")
    local, slurm = tmp_path / "local", tmp_path / "slurm"
    local.mkdir()
    slurm.mkdir()
    snakemake(local)
    snakemake(slurm, "--profile", str(REPO / "profiles" / "slurm-ci"), "--jobs", "2")
    # every job went through sbatch (Snakemake's log names each SLURM job id; the
    # profile keeps the jobs' own logs too)
    log = "".join(p.read_text() for p in (slurm / ".snakemake" / "log").glob("*.log"))
    submitted = log.count("has been submitted with SLURM jobid")
    assert submitted >= 20, f"only {submitted} jobs went through SLURM"
    assert list((slurm / ".snakemake" / "slurm_logs").rglob("*.log"))
    a, b = _tables(local), _tables(slurm)
    assert a.keys() == b.keys()
    differ = [k for k in a if a[k] != b[k]]
    assert not differ, f"SLURM and local runs differ in {differ}"
