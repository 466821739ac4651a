"""Turn a composed config (plain dict) into a frozen, validated `RunConfig`.

Unknown keys (including ones added with `+key=`) and values of the wrong type are
refused here with a one-line `ConfigError` that names the key and the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any

from llmtune.config.schema import RunConfig
from llmtune.config.validate import resolve_auto, validate
from llmtune.errors import ConfigError


def suggestion(name: str, valid: typing.Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest valid name, or the list of valid names."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    if close:
        return f"; did you mean '{close[0]}'?"
    return f"; valid keys: {', '.join(valid)}"


def section_fields(cls: type) -> dict[str, Any]:
    """Field name -> resolved type hint of a config dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(path: str, value: Any, kind: Any) -> Any:
    """Check one leaf value against its declared type; ints are accepted where floats are."""
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a section of keys, got {value!r}")
        return _build(path, value, kind)
    if typing.get_origin(kind) is dict:  # named sections (tasks.<name>): any name, typed values
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected named sections, got {value!r}")
        item = typing.get_args(kind)[1]
        return {str(k): _coerce(f"{path}.{k}", v, item) for k, v in value.items()}
    if typing.get_origin(kind) is tuple:  # tuple[str, ...]: a list, or one value as a 1-list
        items = value if isinstance(value, list | tuple) else [value]
        return tuple(_coerce(f"{path}[{i}]", item, str) for i, item in enumerate(items))
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
    name = getattr(kind, "__name__", str(kind))
    raise ConfigError(f"{path}={value!r}: expected a value of type {name}")


def _build(prefix: str, values: dict[str, Any], cls: type) -> Any:
    fields = section_fields(cls)
    kwargs = {}
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            where = f"'{prefix}'" if prefix else "the top level"
            raise ConfigError(f"unknown key '{path}' in {where}{suggestion(str(key), fields)}")
        if value is None:
            raise ConfigError(f"{path} has no value; set it with {path}=<value>")
        kwargs[key] = _coerce(path, value, fields[key])
    return cls(**kwargs)


def build_run_config(composed: dict[str, Any]) -> RunConfig:
    """Validate a resolved, composed config (Hydra's own `hydra` node removed)."""
    values = {k: v for k, v in composed.items() if k != "hydra"}
    config = _build("", values, RunConfig)
    config = resolve_auto(config)
    validate(config)
    return config
