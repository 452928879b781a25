"""Continuous mode (``locatlas watch``): when the workflow reruns, and that a rerun
processes only the new acquisitions.

The unit tests drive :func:`locatlas.watch.watch` with a fake runner and a fake sleep
whose calls stand for the time passing between polls (files are written "meanwhile"
by hooks on those calls). The workflow test runs the real Snakemake workflow through
the real runner on the tiny atlas, with a new plate landing between two cycles.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from locatlas.watch import input_fingerprint, watch

SETTLE, INTERVAL = 30.0, 60.0


class Clock:
    """A fake ``sleep``: records the waits and runs ``hooks[i]`` on the i-th call (the
    things that happen on disk while the loop sleeps)."""

    def __init__(self, hooks: dict[int, Callable[[], None]] | None = None):
        self.calls: list[float] = []
        self.hooks = hooks or {}

    def __call__(self, seconds: float) -> None:
        hook = self.hooks.get(len(self.calls))
        self.calls.append(seconds)
        if hook is not None:
            hook()


class Runner:
    """A fake workflow run: records what the input looked like, returns ``codes`` in turn."""

    def __init__(self, root: Path, codes=(0,), effect: Callable[[], None] | None = None):
        self.root = root
        self.codes = list(codes)
        self.effect = effect
        self.seen: list[dict[str, int]] = []
        self.args: list[list[str]] = []

    def __call__(self, args) -> int:
        self.args.append(list(args))
        self.seen.append(
            {
                str(p.relative_to(self.root)): p.stat().st_size
                for p in sorted(self.root.rglob("*"))
                if p.is_file()
            }
        )
        if self.effect is not None:
            self.effect()
        return self.codes.pop(0) if len(self.codes) > 1 else self.codes[0]


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as fh:
        fh.write(data)


def _fake_watch(samples, runner, sleep, *, cycles: int, args=()) -> list[int]:
    """The loop with the module's settle/interval times and fakes for the run and time."""
    return watch(samples, snakemake_args=list(args), settle_s=SETTLE, interval_s=INTERVAL,
                 max_cycles=cycles, runner=runner, sleep=sleep)  # fmt: skip


def test_first_cycle_always_runs(tmp_path):
    _write(tmp_path / "in/a_blue.png", b"x" * 10)
    runner = Runner(tmp_path / "in")
    clock = Clock()
    codes = _fake_watch(tmp_path / "in", runner, clock, cycles=1, args=["--cores", "1"])
    assert codes == [0]
    assert runner.args == [["--cores", "1"]]
    assert clock.calls == [SETTLE]  # waited for the input to settle, no poll after the last cycle


def test_first_cycle_runs_even_before_any_input_exists(tmp_path):
    """A workflow that makes its own input (the simulated atlas) still gets its first run."""
    runner = Runner(tmp_path)
    codes = watch(
        tmp_path / "not-yet" / "samplesheet.csv",
        snakemake_args=[],
        max_cycles=2,
        runner=runner,
        sleep=Clock(),
    )
    assert codes == [0]


def test_no_rerun_when_nothing_changed(tmp_path):
    _write(tmp_path / "in/a.tif", b"x" * 10)
    runner = Runner(tmp_path / "in")
    clock = Clock()
    codes = _fake_watch(tmp_path / "in", runner, clock, cycles=5)
    assert codes == [0]
    assert clock.calls == [SETTLE] + [INTERVAL] * 4


def test_growing_file_is_not_picked_up_until_it_settles(tmp_path):
    root = tmp_path / "in"
    _write(root / "a.tif", b"x" * 10)
    new = root / "b.tif"
    # sleeps: 0 settle, 1 interval (b.tif starts landing), 2 settle (b grows),
    # 3 settle (b grows again), 4 settle (unchanged: settled), then the run
    clock = Clock(
        {
            1: lambda: _write(new, b"y" * 100),
            2: lambda: _append(new, b"y" * 100),
            3: lambda: _append(new, b"y" * 100),
        }
    )
    runner = Runner(root)
    codes = _fake_watch(root, runner, clock, cycles=2)
    assert codes == [0, 0]
    assert clock.calls == [SETTLE, INTERVAL, SETTLE, SETTLE, SETTLE]
    assert runner.seen[0] == {"a.tif": 10}
    assert runner.seen[1] == {"a.tif": 10, "b.tif": 300}  # the whole file, never a part


def test_failed_run_is_retried_next_cycle(tmp_path):
    _write(tmp_path / "in/a.tif", b"x" * 10)
    runner = Runner(tmp_path / "in", codes=[1, 0])
    codes = _fake_watch(tmp_path / "in", runner, Clock(), cycles=4)
    assert codes == [1, 0]  # retried once though nothing changed, then quiet


def test_new_file_triggers_exactly_one_rerun(tmp_path):
    root = tmp_path / "in"
    _write(root / "a.tif", b"x" * 10)
    clock = Clock({1: lambda: _write(root / "b.tif", b"y" * 20)})  # lands after run 1
    runner = Runner(root)
    codes = _fake_watch(root, runner, clock, cycles=5)
    assert codes == [0, 0]
    assert runner.seen == [{"a.tif": 10}, {"a.tif": 10, "b.tif": 20}]


def _hpa_stem(folder: Path, stem: str, size: int = 16) -> None:
    for colour in ("blue", "red", "yellow", "green"):
        _write(folder / f"{stem}_{colour}.png", bytes(size))


def test_workflow_outputs_beside_the_sheet_do_not_trigger_reruns(tmp_path):
    """The README's ``locatlas watch --samples sheet.csv`` in the working directory:
    every run writes results/ and .snakemake/ beside the sheet; only the sheet and the
    files it names are input, so the loop must not rerun after each of its own runs."""
    _hpa_stem(tmp_path / "images", "P1_B02_1")
    sheet = tmp_path / "samplesheet.csv"
    sheet.write_text("source,format\nimages/P1_B02_1,hpa\n")
    n = iter(range(100))

    def outputs():
        k = next(n)
        _write(tmp_path / f"results/cells/shard-{k}.parquet", b"z" * (k + 1))
        _write(tmp_path / f".snakemake/log/{k}.snakemake.log", b"log")

    runner = Runner(tmp_path, effect=outputs)
    codes = watch(sheet, snakemake_args=[], max_cycles=4, runner=runner, sleep=Clock())
    assert codes == [0]


def test_sheet_row_and_its_files_trigger_a_rerun(tmp_path):
    """A new row whose files are still missing, then the files: each is a change."""
    _hpa_stem(tmp_path / "images", "P1_B02_1")
    sheet = tmp_path / "samplesheet.csv"
    sheet.write_text("source,format\nimages/P1_B02_1,hpa\n")
    fingerprints = [input_fingerprint(sheet)]
    with open(sheet, "a") as fh:
        fh.write("images/P1_B03_1,hpa\n")
    fingerprints.append(input_fingerprint(sheet))
    _hpa_stem(tmp_path / "images", "P1_B03_1")
    fingerprints.append(input_fingerprint(sheet))
    _append(tmp_path / "images/P1_B03_1_green.png", b"more")  # a channel still growing
    fingerprints.append(input_fingerprint(sheet))
    _write(tmp_path / "images/unrelated.png", b"not in the sheet")
    fingerprints.append(input_fingerprint(sheet))
    assert len(set(fingerprints[:4])) == 4
    assert fingerprints[4] == fingerprints[3]


def test_hidden_files_are_not_input(tmp_path):
    root = tmp_path / "in"
    _write(root / "a.tif", b"x")
    before = input_fingerprint(root)
    _write(root / ".a.tif.part", b"partial")  # a writer's temporary
    _write(root / ".snakemake/log/x.log", b"log")
    assert input_fingerprint(root) == before


def test_objects_under_a_url_prefix_are_input():
    """A prefix in object storage (fsspec's memory filesystem stands in for S3 here)."""
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/watched/run1/a_blue.png", b"x" * 10)
    url = "memory://watched/run1"
    first = input_fingerprint(url)
    assert input_fingerprint(url) == first
    fs.pipe("/watched/run1/b_blue.png", b"y" * 5)
    second = input_fingerprint(url)
    fs.pipe("/watched/run1/b_blue.png", b"y" * 7)  # still being uploaded
    third = input_fingerprint(url)
    fs.pipe("/watched/other/c_blue.png", b"z")  # beside the prefix: not input
    assert len({first, second, third}) == 3 and input_fingerprint(url) == third
    fs.rm("/watched", recursive=True)


def test_cli_passes_snakemake_arguments(monkeypatch, tmp_path):
    import locatlas.watch
    from locatlas.cli import main

    seen = {}
    monkeypatch.setattr(locatlas.watch, "watch", lambda samples, **kw: seen.update(kw, s=samples))
    argv = ["watch", "--samples", str(tmp_path), "--interval", "5", "--settle", "2"]
    main([*argv, "--", "--profile", "profiles/local", "--cores", "2"])
    assert seen["s"] == str(tmp_path)
    assert seen["snakemake_args"] == ["--profile", "profiles/local", "--cores", "2"]
    assert (seen["interval_s"], seen["settle_s"]) == (5.0, 2.0)


# --------------------------------------------------------------------------- workflow


def _run_logs(work: Path) -> list[Path]:
    return sorted((work / ".snakemake" / "log").glob("*.snakemake.log"))


def _jobs(log: Path) -> list[tuple[str, str]]:
    """(rule, wildcards) of every job a Snakemake run log lists."""
    out: list[tuple[str, str]] = []
    rule = None
    for line in log.read_text().splitlines():
        s = line.strip()
        if s.startswith(("rule ", "localrule ", "checkpoint ", "localcheckpoint ")):
            rule = s.split()[1].rstrip(":")
            out.append((rule, ""))
        elif s.startswith("wildcards:") and rule is not None and out:
            out[-1] = (rule, s.removeprefix("wildcards:").strip())
    return out


def _snapshot(work: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(work)): (p.stat().st_mtime_ns, p.read_bytes())
        for sub in ("cells", "localization", "receipts/normalize", "receipts/segment")
        for p in (work / "results" / sub).glob("*")
        if p.is_file()
    }


def _acquire_plate(sim: Path, plate: str, like: str) -> list[str]:
    """A new plate lands: copies of ``like``'s channel files under ``plate``'s names in
    ``images/<plate>/``, and its rows appended to the sheet. Returns the new sources."""
    sheet = sim / "samplesheet.csv"
    rows = pd.read_csv(sheet, dtype=str, keep_default_na=False)
    new = rows[rows["plate"] == like].copy()
    (sim / "images" / plate).mkdir(parents=True)
    sources = []
    for src in new["source"]:
        stem = Path(src).name
        for f in (sim / src).parent.glob(f"{stem}_*"):
            shutil.copy2(f, sim / "images" / plate / f.name.replace(like, plate, 1))
        sources.append(f"images/{plate}/{stem.replace(like, plate, 1)}")
    new["plate"] = plate
    new["source"] = sources
    pd.concat([rows, new]).to_csv(sheet, index=False)
    return sources


# several workflow runs (~5 min): with the reliability tests, outside the default suite
@pytest.mark.workflow
@pytest.mark.reliability
def test_watch_reruns_only_the_new_plate(tmp_path, monkeypatch):
    """Three cycles of the real loop, the real runner and the real workflow
    (config/tiny.yaml) in an empty working directory: the first cycle builds the atlas,
    a plate lands while the loop waits, the second cycle processes only that plate's
    shards and refreshes the atlas, the third sees no change and does nothing.

    (A copy of a finished run cannot stand in for the first cycle: the manifest holds
    absolute source paths, so in a copy every shard's manifest changes and all rerun.)
    """
    from workflow_utils import BIN, REPO

    work = tmp_path / "w"
    work.mkdir()
    for key, value in {
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
        "NUMBA_CACHE_DIR": str(work / ".numba"),
    }.items():
        monkeypatch.setenv(key, value)
    args = [
        "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(work),
        "--configfile", str(REPO / "config/tiny.yaml"),
        "--cores", "2",
    ]  # fmt: skip
    sim = work / "results" / "simulated"
    atlas = work / "results/atlas/proteins.parquet"
    state: dict = {}

    def acquisition():  # the microscope writes plate P09 while the loop waits
        state["before"] = _snapshot(work)
        state["atlas"] = atlas.stat().st_mtime_ns
        state["cells"] = pd.read_parquet(atlas)["n_cells"].sum()
        state["logs"] = _run_logs(work)
        _acquire_plate(sim, "P09", like="P02")

    # sleeps: 0 settle (before run 1), 1 interval (P09 lands), 2 settle, 3 interval
    clock = Clock({1: acquisition})
    codes = watch(
        sim / "samplesheet.csv",  # made by the first run itself (the simulated atlas)
        snakemake_args=args,
        workdir=work,
        settle_s=0.0,
        interval_s=0.0,
        max_cycles=3,
        sleep=clock,
    )
    assert codes == [0, 0], codes
    assert clock.calls == [0.0, 0.0, 0.0, 0.0]
    assert len(state["logs"]) == 1, state["logs"]
    first = _jobs(state["logs"][0])
    assert ("simulate", "") in first and ("train", "") in first
    logs = _run_logs(work)
    assert len(logs) == 2, logs  # cycle 3 did not run the workflow
    second = _jobs(logs[1])

    shard_rules = ("normalize", "clear", "segment", "localize")
    ran = [(r, w) for r, w in second if r in shard_rules]
    assert ran, second
    assert all(w.startswith("shard=P09-") for _, w in ran), ran
    assert {r for r, _ in ran} == set(shard_rules)
    manifest = pd.read_parquet(work / "results/manifest/manifest.parquet")
    p09 = manifest[manifest["plate"] == "P09"]
    assert len(p09) == (manifest["plate"] == "P02").sum(), "every acquired field is ingested"
    assert p09["source"].str.contains("P09").all()
    assert {w for _, w in ran} == {f"shard={s}" for s in p09["shard"].unique()}
    assert not any(r in ("simulate", "train") for r, _ in second), second
    assert ("aggregate", "") in second

    after = _snapshot(work)
    touched = [k for k in state["before"] if after.get(k) != state["before"][k]]
    assert not touched, f"shards of P01/P02 were rerun: {touched}"
    added = sorted(set(after) - set(state["before"]))
    assert added and all("P09" in k for k in added), added
    assert atlas.stat().st_mtime_ns > state["atlas"], "the atlas was not refreshed"
    assert pd.read_parquet(atlas)["n_cells"].sum() > state["cells"]
