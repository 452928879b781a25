"""Reliability at scale: kills, reruns and growing inputs lose or duplicate nothing.

- a run killed with SIGKILL at random points and resumed equals a clean run, byte for byte;
- a single shard job killed mid-write (zarr chunks, parquet) leaves no receipt and its
  rerun equals an uninterrupted job;
- adding a plate reruns only that plate's shards (and the whole-atlas steps): shown by
  tests/test_watch.py::test_watch_reruns_only_the_new_plate, which adds a plate to a
  running acquisition (a copy of a finished run cannot stand in for it: the manifest
  holds absolute source paths, so in a copy every shard's manifest changes).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
import zarr
from workflow_utils import BIN, REPO, snakemake

from locatlas.config import validate_config

pytestmark = [pytest.mark.workflow, pytest.mark.reliability]


def _tables(root: Path) -> dict[str, bytes]:
    """Every per-shard table and receipt, by relative path."""
    out = {}
    for sub in (
        "cells",
        "localization",
        "receipts/normalize",
        "receipts/clear",
        "receipts/segment",
    ):
        for p in sorted((root / "results" / sub).glob("*")):
            if p.is_file():
                out[f"{sub}/{p.name}"] = p.read_bytes()
    return out


def _label_arrays(root: Path) -> dict[str, np.ndarray]:
    out = {}
    for plate in sorted((root / "results" / "zarr").glob("*.ome.zarr")):
        for lab in sorted(plate.glob("*/*/*/labels/*")):
            if (lab / "zarr.json").exists() and lab.name in ("nuclei", "cells"):
                grp = zarr.open_group(str(lab), mode="r")
                key = grp.attrs["ome"]["multiscales"][0]["datasets"][0]["path"]
                out[str(lab.relative_to(root))] = grp[key][...]
    return out


def _assert_same_run(a: Path, b: Path) -> None:
    ta, tb = _tables(a), _tables(b)
    assert ta.keys() == tb.keys()
    differ = [k for k in ta if ta[k] != tb[k]]
    assert not differ, f"tables differ: {differ}"
    la, lb = _label_arrays(a), _label_arrays(b)
    assert la.keys() == lb.keys() and la
    for k in la:
        np.testing.assert_array_equal(la[k], lb[k], err_msg=k)
    cells = pd.concat([pd.read_parquet(p) for p in sorted((b / "results/cells").glob("*.parquet"))])
    assert not cells.duplicated(["field_id", "cell_id"]).any()


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}


def _snakemake_cmd(work: Path) -> list[str]:
    return [
        str(BIN / "snakemake"),
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(work),
        "--configfile",
        str(REPO / "config/tiny.yaml"),
        "--cores",
        "2",
        "--rerun-incomplete",
    ]


def test_two_clean_runs_are_byte_identical(tiny_run, tmp_path):
    snakemake(tmp_path)
    _assert_same_run(tiny_run, tmp_path)


def test_killed_and_resumed_run_equals_clean_run(tiny_run, tmp_path):
    rng = random.Random(20261124)
    for trial in range(3):
        proc = subprocess.Popen(
            _snakemake_cmd(tmp_path),
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        delay = rng.uniform(8, 40) * (trial + 1)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole job tree, mid-write
            proc.wait()
        subprocess.run(
            [*_snakemake_cmd(tmp_path), "--unlock"], env=_env(), capture_output=True, check=True
        )
    snakemake(tmp_path, "--rerun-incomplete")
    _assert_same_run(tiny_run, tmp_path)


@pytest.mark.parametrize("stage", ["normalize", "segment"])
def test_shard_job_killed_mid_write_reruns_cleanly(tiny_run, tmp_path, stage):
    """Kill one shard job at random moments; the receipt never appears early and the
    rerun's outputs equal the uninterrupted job's."""
    work = tmp_path / "w"
    shutil.copytree(tiny_run, work, symlinks=True)
    shard = sorted(p.stem for p in (work / "results/receipts/normalize").glob("*.parquet"))[0]
    if stage == "normalize":
        outputs = [f"results/receipts/normalize/{shard}.parquet"]
        cmd = [
            "normalize",
            "--shard-manifest", f"results/manifest/shards/{shard}.parquet",
            "--zarr-root", "results/zarr",
            "--flatfield", f"results/flatfield/{shard.rsplit('-', 1)[0]}.npy",
            "--receipt", outputs[0],
            "--quarantine", f"results/quarantine/normalize/{shard}.parquet",
        ]  # fmt: skip
    else:
        outputs = [
            f"results/cells/shard-{shard}.parquet",
            f"results/receipts/segment/{shard}.parquet",
        ]
        cmd = [
            "segment",
            "--clear-receipt", f"results/receipts/clear/{shard}.parquet",
            "--shard-manifest", f"results/manifest/shards/{shard}.parquet",
            "--cells", outputs[0],
            "--crops", f"results/crops/shard-{shard}.zarr",
            "--receipt", outputs[1],
        ]  # fmt: skip
    # the same parameters the workflow passed, so receipts (with their config hash) match
    cfg = validate_config(yaml.safe_load((REPO / "config/tiny.yaml").read_text()))
    cmd += ["--params", json.dumps(cfg[stage], sort_keys=True)]
    reference = {o: (work / o).read_bytes() for o in outputs}
    # time one uninterrupted job, so that the kills land inside it (start-up included)
    for o in outputs:
        (work / o).unlink()
    t0 = time.perf_counter()
    subprocess.run([str(BIN / "locatlas"), *cmd], cwd=work, env=_env(), check=True,
                   capture_output=True)  # fmt: skip
    duration = time.perf_counter() - t0
    rng = random.Random(stage)
    kills = 0
    for _ in range(3):
        for o in outputs:
            (work / o).unlink(missing_ok=True)
        proc = subprocess.Popen(
            [str(BIN / "locatlas"), *cmd], cwd=work, env=_env(), start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(rng.uniform(0.2, 0.9) * duration)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            # the receipt is written last and atomically: absent, or whole and final
            # (a kill during interpreter shutdown lands after it)
            receipt = work / outputs[-1]
            assert not receipt.exists() or receipt.read_bytes() == reference[outputs[-1]]
        for p in (work / outputs[-1]).parent.glob(".*tmp"):
            shutil.rmtree(p, ignore_errors=True)  # a killed atomic write leaves its temporary
    assert kills, "no trial killed the job while it ran"
    subprocess.run([str(BIN / "locatlas"), *cmd], cwd=work, env=_env(), check=True,
                   capture_output=True)  # fmt: skip
    for o in outputs:
        assert (work / o).read_bytes() == reference[o], o
    if stage == "segment":
        _assert_labels_equal(tiny_run, work)
    else:  # a rewritten raw image drops its derived data; the raw pixels must be equal
        _assert_raw_equal(tiny_run, work, shard)


def _assert_raw_equal(a: Path, b: Path, shard: str) -> None:
    from locatlas.omezarr import read_field_image

    receipt = pd.read_parquet(b / f"results/receipts/normalize/{shard}.parquet")
    for path in sorted(set(receipt["zarr_path"])):
        ra, _ = read_field_image(str(a / path))
        rb, _ = read_field_image(str(b / path))
        np.testing.assert_array_equal(ra, rb, err_msg=path)


def _assert_labels_equal(a: Path, b: Path) -> None:
    la, lb = _label_arrays(a), _label_arrays(b)
    for k in la:
        np.testing.assert_array_equal(la[k], lb[k], err_msg=k)
