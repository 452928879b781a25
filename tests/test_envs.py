"""The per-stage conda environments must agree with pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ENVS = sorted((REPO / "envs").glob("*.yaml"))
STAGES = {"ingest", "normalize", "clear", "segment", "localize", "aggregate"}


def _name(spec: str) -> str:
    return re.split(r"[<>=!~\[ ;]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject_specs() -> dict[str, str]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    return {_name(s): s.replace(" ", "") for s in data["project"]["dependencies"]}


def test_one_env_per_stage():
    assert {p.stem for p in ENVS} == STAGES


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.stem)
def test_env_matches_pyproject(env):
    specs = _pyproject_specs()
    doc = yaml.safe_load(env.read_text())
    pip = next(d["pip"] for d in doc["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert "-e ../" in pip, f"{env.name}: must install the locatlas package itself"
    for spec in pip:
        if spec.startswith("-e"):
            continue
        name = _name(spec)
        assert name in specs, f"{env.name}: {name} is not a dependency in pyproject.toml"
        assert spec.replace(" ", "") == specs[name], (
            f"{env.name}: {spec!r} differs from pyproject.toml's {specs[name]!r}"
        )
    assert any(d == "python=3.11" for d in doc["dependencies"] if isinstance(d, str))
