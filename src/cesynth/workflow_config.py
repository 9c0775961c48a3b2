"""The workflow's config as given on the command line, checked against its schema in one line.

Snakemake reads ``--config key={nested: value}`` with YAML's base loader, so every nested value
arrives as a string (``"0"``, ``"0.5"``, ``"true"``). :func:`coerce_command_line_values` turns
those into the numbers and booleans ``config/config.schema.yaml`` asks for, so a value given on
the command line is checked as a value (``demo.subjects: 0 is less than the minimum of 1``), not
refused for its type. :func:`exit_on_schema_error` reports a failed validation as that one line
(``error: config: <key path>: <what is wrong>``) instead of Snakemake's schema dump.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import yaml

_BOOLEANS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def coerce_command_line_values(config: dict[str, Any], schema_path: str | os.PathLike) -> None:
    """Turn string values into the numbers and booleans the schema asks for (in place).

    Only a string whose schema allows no string and that reads as one of the allowed types is
    changed; anything else is left for the validation to judge.

    Args:
        config: the workflow's config.
        schema_path: the JSON schema (YAML) the config is validated against.
    """
    schema = yaml.safe_load(Path(schema_path).read_text())
    _coerce(config, schema, schema)


def schema_error_line(err: BaseException) -> str | None:
    """``<key path>: <message>`` of the JSON-schema validation error behind ``err`` (Snakemake
    wraps it in a ``WorkflowError``), or None when there is none."""
    import jsonschema

    found: BaseException | None = err
    while found is not None and not isinstance(found, jsonschema.ValidationError):
        found = found.__cause__ or found.__context__
    if found is None:
        return None
    where = ".".join(str(key) for key in found.absolute_path) or "(top level)"
    return f"{where}: {' '.join(found.message.split())}"


def exit_on_schema_error(err: BaseException) -> NoReturn:
    """Print ``error: config: <key path>: <message>`` and exit 1, or re-raise ``err`` when it
    is not a schema validation error."""
    line = schema_error_line(err)
    if line is None:
        raise err
    exit_on_config_error(line)


def exit_on_config_error(problem: str) -> NoReturn:
    """Print ``error: config: <problem>`` (one line) and exit 1: a config the schema accepts
    but the data contradict (``sets.assigned`` naming no participant)."""
    print(f"error: config: {' '.join(str(problem).split())}", file=sys.stderr)
    raise SystemExit(1)


def _coerce(value: Any, schema: Any, root: Mapping[str, Any]) -> Any:
    schema = _resolve(schema, root)
    if not isinstance(schema, Mapping):
        return value
    if isinstance(value, dict):
        for key, item in value.items():
            sub = schema.get("properties", {}).get(key, schema.get("additionalProperties"))
            value[key] = _coerce(item, sub, root)
        return value
    if isinstance(value, list):
        return [_coerce(item, schema.get("items"), root) for item in value]
    if isinstance(value, str):
        return _from_string(value, _types(schema, root))
    return value


def _resolve(schema: Any, root: Mapping[str, Any]) -> Any:
    """Follow local ``$ref`` (``#/$defs/...``) links."""
    while isinstance(schema, Mapping) and str(schema.get("$ref", "")).startswith("#/"):
        target: Any = root
        for part in schema["$ref"][2:].split("/"):
            target = target[part]
        schema = target
    return schema


def _types(schema: Mapping[str, Any], root: Mapping[str, Any]) -> set[str]:
    types = schema.get("type", [])
    found = {types} if isinstance(types, str) else set(types)
    for key in ("anyOf", "oneOf"):
        for option in schema.get(key, []):
            option = _resolve(option, root)
            if isinstance(option, Mapping):
                found |= _types(option, root)
    return found


def _from_string(text: str, types: set[str]) -> Any:
    if not types or "string" in types:
        return text
    if "boolean" in types and text.strip().lower() in _BOOLEANS:
        return _BOOLEANS[text.strip().lower()]
    for kind, convert in (("integer", int), ("number", float)):
        if kind in types:
            try:
                return convert(text)
            except ValueError:
                pass
    return text
