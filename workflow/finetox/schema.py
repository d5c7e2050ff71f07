"""The config's JSON Schema (workflow/schemas/config.schema.yaml): validation that fills in every default, and
errors that name the key and what is allowed."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import yaml

from finetox.errors import ConfigError

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"


def _with_defaults(validator_class):
    """A jsonschema validator class that fills in `default` values while it validates."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _schema_at(schema: dict, path) -> dict:
    """The subschema that describes the instance at `path` (good enough for error messages)."""
    node = schema
    for part in path:
        props = node.get("properties", {})
        if isinstance(part, str) and part in props:
            node = props[part]
        elif isinstance(part, int) and "items" in node:
            node = node["items"]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return {}
    return node


def _resolve_ref(schema: dict, ref: str) -> dict:
    node = schema
    for part in ref.lstrip("#/").split("/"):
        node = node[part]
    return node


def _describe(error: jsonschema.ValidationError, schema: dict) -> str:
    where = "config" + "".join(f"[{p!r}]" if isinstance(p, str) else f"[{p}]" for p in error.absolute_path)
    if error.validator in ("additionalProperties", "unevaluatedProperties"):
        parent = _schema_at(schema, error.absolute_path)
        allowed = set(parent.get("properties", {}))
        if "$ref" in parent:  # a table source extended by the probe keys
            allowed |= set(_resolve_ref(schema, parent["$ref"]).get("properties", {}))
        extra = sorted(set(error.instance) - allowed)
        return f"{where}: unknown key(s) {extra}; allowed keys: {sorted(allowed)}"
    if error.validator == "oneOf" and isinstance(error.instance, dict):
        choices = [" + ".join(map(repr, option.get("required", []))) for option in error.validator_value]
        return f"{where}: give exactly one of {' or '.join(choices)}"
    return f"{where}: {error.message}"


def load_schema() -> dict:
    """The config's schema: the file's, with each lever's variant block (finetox.levers) as one more way to give a
    variant (a oneOf alternative beside `model`, `scores` and `from`) and its role before `other`."""
    from finetox.levers import LEVERS

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    variant = schema["properties"]["variants"]["additionalProperties"]
    roles = variant["properties"]["role"]["enum"]
    for lever in LEVERS.values():
        variant["properties"][lever.KEY] = copy.deepcopy(lever.SCHEMA)
        variant["oneOf"].append({"required": [lever.KEY]})
        roles.insert(roles.index("other"), lever.ROLE)
    return schema


def validate(config: dict) -> dict:
    """Validate `config` against the schema, fill in defaults (in place) and return it."""
    schema = load_schema()
    validator_class = _with_defaults(jsonschema.validators.validator_for(schema))
    validator = validator_class(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = sorted({_describe(e, schema) for e in errors})
        raise ConfigError("invalid finetox config:\n  " + "\n  ".join(lines))
    return config
