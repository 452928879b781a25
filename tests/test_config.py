"""Config validation: defaults filled, wrong keys or types fail naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from locatlas.config import ConfigError, load_schema, validate_config

REPO = Path(__file__).resolve().parents[1]


def _walk(schema, path=""):
    for name, sub in schema.get("properties", {}).items():
        yield f"{path}{name}", sub
        yield from _walk(sub, f"{path}{name}.")
        for branch in sub.get("oneOf", []):
            yield from _walk(branch, f"{path}{name}.")


def test_every_key_has_description_and_default():
    for key, sub in _walk(load_schema()):
        assert sub.get("description"), f"schema key {key} has no description"
        assert "default" in sub, f"schema key {key} has no default"


@pytest.mark.parametrize("name", ["config.yaml", "tiny.yaml"])
def test_shipped_configs_validate(name):
    cfg = validate_config(yaml.safe_load((REPO / "config" / name).read_text()))
    assert cfg["shard_size"] >= 1
    assert cfg["input"]["simulate"]["preset"] in {"tiny", "demo", "benchmark"}


def test_defaults_are_filled():
    cfg = validate_config({"input": {"samples": "sheet.csv"}})
    assert cfg["shard_size"] == 200
    assert cfg["input"]["simulate"] is None
    assert cfg["channels"]["roles"] == {}


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="shard_sise"):
        validate_config({"shard_sise": 3})


def test_wrong_type_is_named_with_its_path():
    with pytest.raises(ConfigError, match=r"config key 'input\.simulate'"):
        validate_config({"input": {"simulate": {"preset": "huge"}}})
    with pytest.raises(ConfigError, match=r"config key 'shard_size'"):
        validate_config({"shard_size": "ten"})


def test_training_defaults_match_train_params():
    """The schema documents localize.train; its defaults must be TrainParams' own
    (splits and max_cells choose the training cells: the train job reads them)."""
    import dataclasses

    from locatlas.localize.train import TrainParams

    props = load_schema()["properties"]["localize"]["properties"]["train"]["properties"]
    fields = {f.name: f.default for f in dataclasses.fields(TrainParams)}
    assert set(props) - {"splits", "max_cells"} == set(fields)
    for name, default in fields.items():
        assert props[name]["default"] == default, name
    filled = validate_config({})["localize"]["train"]
    filled.pop("splits")
    assert filled.pop("max_cells") == 50_000
    assert TrainParams.from_any(filled) == TrainParams()


def test_real_hpa_config_validates_and_names_its_own_results():
    cfg = validate_config(yaml.safe_load((REPO / "config" / "hpa_v18.yaml").read_text()))
    assert cfg["input"]["simulate"] is None and cfg["input"]["samples"]
    assert cfg["results"] != "results" and cfg["localize"]["model"]
    assert (REPO / cfg["input"]["samples"]).is_file()
