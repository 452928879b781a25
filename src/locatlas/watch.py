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
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

log = logging.getLogger("locatlas.watch")

#: A samples path with one of these suffixes is a sample sheet (as for ingest).
SHEET_SUFFIXES = (".csv", ".tsv", ".tab", ".txt")


def _stat_line(p: Path, name: str) -> str:
    try:
        st = p.stat()
    except OSError:  # vanished between listing and stat (a writer's temporary)
        return f"{name}\0gone\n"
    return f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n"


def _sheet_files(sheet: Path) -> Iterable[tuple[Path, str]]:
    """(file, name) for what a sheet's rows read: a source file, or the channel files of
    an HPA stem; a source not there yet gives a 'missing' entry so that its arrival
    counts as a change. URL sources count through the sheet's text only."""
    from locatlas.ingest.hpa import clear_listing_cache, find_channel_files
    from locatlas.ingest.samplesheet import SampleSheetError, sheet_sources
    from locatlas.remote import is_url

    clear_listing_cache()
    try:
        sources = sheet_sources(sheet)
    except SampleSheetError:  # unreadable or empty for now: the sheet's own stat counts
        return
    for src in sources:
        if is_url(src):
            continue
        path = Path(src)
        if path.is_file():
            yield path, src
            continue
        channels = find_channel_files(path)
        if not channels:
            yield path, f"{src}\0missing"
        for files in channels.values():
            for f in files:
                yield f, f"{src}\0{f.name}"


def _remote_fingerprint(url: str, h) -> None:
    from locatlas.remote import find_objects

    try:
        found = find_objects(url)
    except FileNotFoundError:
        found = {}
    for name in sorted(found):
        info = found[name]
        version = next(
            (str(info[k]) for k in ("ETag", "LastModified", "mtime", "created") if info.get(k)),
            "",
        )
        h.update(f"{name}\0{info.get('size')}\0{version}\n".encode())


def input_fingerprint(path: str | Path, *, pattern: str = "**/*") -> str:
    """A digest of the names, sizes and modification times of the input files.

    * A folder: every file below it that matches ``pattern``; hidden files and folders
      are skipped, as ingest skips them (a writer's temporaries, ``.snakemake``).
    * A sample sheet: the sheet itself and the files its rows name (source files, the
      channel files of HPA stems), so a new row and a new or growing image are both
      seen, and the workflow's own outputs in the same folder are not (a sheet in the
      working directory would otherwise see every run's results as new input).
    * A URL (``s3://bucket/prefix/``): names, sizes and ETags of the objects below it.
    * A path that does not exist (yet): a constant.
    """
    from locatlas.remote import is_url

    h = hashlib.sha256()
    if is_url(path):
        _remote_fingerprint(str(path), h)
        return h.hexdigest()
    path = Path(path)
    if path.is_file():
        h.update(_stat_line(path, path.name).encode())
        if path.suffix.lower() in SHEET_SUFFIXES:
            for p, name in _sheet_files(path):
                h.update(_stat_line(p, name).encode())
        return h.hexdigest()
    for p in sorted(path.glob(pattern)):
        rel = p.relative_to(path)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        h.update(_stat_line(p, rel.as_posix()).encode())
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
