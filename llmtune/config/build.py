"""Turn a composed config (plain dict) into a frozen, validated `RunConfig`.

Unknown keys (including ones added with `+key=`) and values of the wrong type are
refused here with a one-line `ConfigError` that names the key and the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any

from llmtune.config import choices
from llmtune.config.schema import FinetuneModel, RunConfig
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


def _coerce(path: str, value: Any, kind: Any, saved: bool = False) -> Any:
    """Check one leaf value against its declared type; ints are accepted where floats are."""
    if path in choices.SELECTORS or dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a section of keys, got {value!r}")
        if path in choices.SELECTORS:  # the section's class is its choice's
            kind = _chosen_class(path, value)
        return _build(path, value, kind, saved)
    if typing.get_origin(kind) is dict:  # named sections (tasks.<name>): any name, typed values
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected named sections, got {value!r}")
        item = typing.get_args(kind)[1]
        return {str(k): _coerce(f"{path}.{k}", v, item, saved) for k, v in value.items()}
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


def _chosen_class(section: str, values: dict[str, Any]) -> type:
    """The config class that `<section>.<selector>` picks (model.family=gpt -> GPTConfig)."""
    selector = choices.SELECTORS[section]
    options = choices.classes(section)
    choice = values.get(selector)
    if choice is None:
        raise ConfigError(f"{section}.{selector} is required; set it with {section}={{option}}")
    if choice not in options:
        raise ConfigError(
            f"{section}.{selector}={choice!r}: no such {selector}"
            f"{suggestion(str(choice), options).replace('valid keys', 'options')}"
        )
    return options[choice]


def _unknown_key(prefix: str, key: str, fields: dict, values: dict) -> ConfigError:
    path = f"{prefix}.{key}" if prefix else str(key)
    if prefix in choices.SELECTORS:
        selector = choices.SELECTORS[prefix]
        chosen = f"{prefix}.{selector}={values[selector]}"
        owners = choices.owners(prefix, key)
        if owners:
            return ConfigError(
                f"'{path}' is a key of {prefix}.{selector}={'/'.join(owners)}, not of {chosen}"
                f" (its keys: {', '.join(k for k in fields if k != selector)})"
            )
        return ConfigError(f"unknown key '{path}' for {chosen}{suggestion(key, fields)}")
    where = f"'{prefix}'" if prefix else "the top level"
    return ConfigError(f"unknown key '{path}' in {where}{suggestion(key, fields)}")


def _finetune_model(values: dict[str, Any]) -> FinetuneModel:
    """finetune's model section: its own keys, and any family's keys as expected values."""
    own = section_fields(FinetuneModel)
    kwargs, expected = {}, []
    for key, value in values.items():
        path = f"model.{key}"
        if key in own and key != "expected":
            kwargs[key] = _coerce(path, value, own[key])
            continue
        families = [section_fields(c) for c in choices.classes("model").values()]
        types = [fields[key] for fields in families if key in fields]
        if not types:
            valid = {*own, *(k for fields in families for k in fields)} - {"expected"}
            raise ConfigError(f"unknown key '{path}' in 'model'{suggestion(key, valid)}")
        expected.append((key, _coerce(path, value, types[0])))
    return FinetuneModel(**kwargs, expected=tuple(expected))


def _build(prefix: str, values: dict[str, Any], cls: type, saved: bool = False) -> Any:
    """`cls` from a dict of its keys; `saved` (a checkpoint's config.yaml, maybe written before
    each choice had its own keys) drops another choice's keys instead of refusing them."""
    fields = section_fields(cls)
    kwargs = {}
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            if saved and prefix in choices.SELECTORS and choices.owners(prefix, str(key)):
                continue  # another choice's key, in a config written before choices had own keys
            raise _unknown_key(prefix, str(key), fields, values)
        if value is None:
            raise ConfigError(f"{path} has no value; set it with {path}=<value>")
        if path == "model" and values.get("command") == "finetune" and not saved:
            kwargs[key] = _finetune_model(value)
            continue
        kwargs[key] = _coerce(path, value, fields[key], saved)
    return cls(**kwargs)


def build_run_config(composed: dict[str, Any], saved: bool = False) -> RunConfig:
    """Validate a resolved, composed config (Hydra's own `hydra` node removed); `saved`: a
    checkpoint's config.yaml (see `_build`)."""
    values = {k: v for k, v in composed.items() if k != "hydra"}
    config = _build("", values, RunConfig, saved)
    config = resolve_auto(config)
    validate(config)
    return config
