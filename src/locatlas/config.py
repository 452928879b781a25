"""Configuration: load, fill defaults and validate against the workflow's JSON schema.

The schema in ``workflow/schemas/config.schema.yaml`` is the documentation of every
key. Validation fails before any job runs and names the offending key.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """The configuration does not match the schema."""


def _with_defaults(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def load_schema(path: str | Path = SCHEMA) -> dict:
    with open(path) as fh:
        return yaml.safe_load(fh)


def _fill_subschema_defaults(config: dict, schema: dict) -> None:
    """``oneOf`` branches are not descended into by the defaults filler: do it here
    for object-valued keys whose value is given."""
    for name, sub in schema.get("properties", {}).items():
        value = config.get(name)
        if isinstance(value, dict):
            for branch in sub.get("oneOf", []):
                if branch.get("type") == "object":
                    for key, prop in branch.get("properties", {}).items():
                        if "default" in prop:
                            value.setdefault(key, copy.deepcopy(prop["default"]))
            _fill_subschema_defaults(value, sub)


def validate_config(config: dict[str, Any], schema: dict | None = None) -> dict[str, Any]:
    """Return a copy of ``config`` with defaults filled in; raise ConfigError naming
    the first offending key (as a dotted path) otherwise."""
    schema = schema or load_schema()
    config = copy.deepcopy(config or {})
    errors = sorted(_Validator(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        where = ".".join(str(p) for p in err.absolute_path) or "<top level>"
        raise ConfigError(f"config key '{where}': {err.message}")
    _fill_subschema_defaults(config, schema)
    return config


def load_config(path: str | Path) -> dict[str, Any]:
    with open(path) as fh:
        return validate_config(yaml.safe_load(fh) or {})


def config_hash(section: Any) -> str:
    """A short stable hash of (part of) a configuration, for provenance."""
    text = json.dumps(section, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
