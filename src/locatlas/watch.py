"""Continuous mode for an acquiring microscope: process new acquisitions as they land.

The workflow is incremental by construction (stable shards, per-shard manifests that
are only rewritten when their content changes, receipts): rerunning it after new
files arrive processes only their shards and then refreshes the atlas and its alerts.
This loop decides *when* to rerun: once the input has changed and then stayed
unchanged for ``settle_s`` seconds (a file still being written is not picked up).
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger("locatlas.watch")


def input_fingerprint(path: str | Path, *, pattern: str = "**/*") -> str:
    """A digest of the names, sizes and modification times of every input file.

    For a sample sheet the sheet itself and every file below its folder count, so
    both a new sheet row and new image files are seen.
    """
    path = Path(path)
    root = path.parent if path.is_file() else path
    h = hashlib.sha256()
    files = [path] if path.is_file() else []
    files += sorted(p for p in root.glob(pattern) if p.is_file())
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def run_snakemake(args: Sequence[str], *, cwd: str | Path) -> int:
    cmd = ["snakemake", *args]
    log.info("running: %s", " ".join(cmd))
    return subprocess.run(cmd, cwd=cwd, check=False).returncode


def watch(
    samples: str | Path,
    *,
    snakemake_args: Sequence[str],
    workdir: str | Path = ".",
    interval_s: float = 60.0,
    settle_s: float = 30.0,
    max_cycles: int | None = None,
    runner: Callable[[Sequence[str]], int] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[int]:
    """Poll ``samples`` and rerun the workflow whenever it changed and then settled.

    Returns the exit codes of the runs made (useful to tests; the command line
    loops until interrupted). The first cycle always runs, to catch up.
    """
    runner = runner or (lambda a: run_snakemake(a, cwd=workdir))
    last_done: str | None = None
    codes: list[int] = []
    cycles = 0
    while max_cycles is None or cycles < max_cycles:
        cycles += 1
        current = input_fingerprint(samples)
        if current != last_done:
            # wait until the acquisition stops changing before processing it
            while True:
                sleep(settle_s)
                again = input_fingerprint(samples)
                if again == current:
                    break
                current = again
            code = runner(list(snakemake_args))
            codes.append(code)
            if code == 0:
                last_done = current
                log.info("atlas refreshed for input %s", current[:12])
            else:
                log.error("workflow failed (exit %d); retrying next cycle", code)
        if max_cycles is None or cycles < max_cycles:
            sleep(interval_s)
    return codes
