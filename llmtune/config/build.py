"""Turn a composed config (plain dict) into a frozen, validated `RunConfig`.

Unknown keys (including ones added with `+key=`), keys of another choice (an mlm key with
objective=seq_cls), sections the command does not use and values of the wrong type are
refused here with a one-line `ConfigError` naming the key and the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any

from llmtune.config import choices, layout
from llmtune.config.schema import COMMAND_CLASSES, FinetuneModel, RunConfig
from llmtune.config.validate import resolve_auto, validate
from llmtune.errors import ConfigError
from llmtune.models.registry import FAMILIES


def suggestion(name: str, valid: typing.Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest valid name, or the list of valid names."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    if close:
        return f"; did you mean '{close[0]}'?"
    return f"; valid keys: {', '.join(valid)}"


def section_fields(cls: type) -> dict[str, Any]:
    """Field name -> resolved type hint of a config dataclass (keys the builder fills in, such
    as FinetuneModel.expected, are not keys a user gives)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if not f.metadata}


def _coerce(path: str, value: Any, kind: Any, saved: bool) -> Any:
    """Check one leaf value against its declared type; ints are accepted where floats are."""
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a section of keys, got {value!r}")
        return _build(path, value, kind, saved)
    if typing.get_origin(kind) is dict:  # named sections (tasks.<name>): any name, typed values
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected named sections, got {value!r}")
        item = typing.get_args(kind)[1]
        return {str(k): _coerce(f"{path}.{k}", v or {}, item, saved) for k, v in value.items()}
    if typing.get_origin(kind) is tuple:  # tuple[str, ...]: a list, or one value as a 1-list
        items = value if isinstance(value, list | tuple) else [value]
        of = typing.get_args(kind)[0]  # str, or int (model.layer_heads)
        return tuple(_coerce(f"{path}[{i}]", item, of, saved) for i, item in enumerate(items))
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


def _unknown_key(prefix: str, key: str, fields: dict, values: dict) -> ConfigError:
    path = f"{prefix}.{key}" if prefix else str(key)
    selector = choices.SELECTORS.get(prefix)
    if selector and selector in values:
        chosen = f"{prefix}.{selector}={values[selector]}"
        owners = choices.owners(prefix, key)
        if owners:
            return _foreign_key(prefix, key, owners, chosen, fields)
        return ConfigError(f"unknown key '{path}' for {chosen}{suggestion(key, fields)}")
    where = f"'{prefix}'" if prefix else "the top level"
    return ConfigError(f"unknown key '{path}' in {where}{suggestion(key, fields)}")


def _foreign_key(
    prefix: str, key: str, owners: list[str], chosen: str, fields: dict
) -> ConfigError:
    """Another choice's key: which choices have it, what it does, and what to do."""
    from llmtune.config.help import field_comments  # help.py imports this module

    path, selector = f"{prefix}.{key}", choices.SELECTORS[prefix]
    meaning = field_comments(choices.classes(prefix)[owners[0]]).get(key, "")
    what = f" ({meaning})" if meaning else ""
    # data=files, objective=mlm, method=lora name their options; a model is a preset
    fix = f"add {prefix}={owners[0]} or " if owners[0] in layout.group_options(prefix) else ""
    keys = ", ".join(k for k in fields if k != selector) or "none"
    return ConfigError(
        f"'{path}' is a key of {prefix}.{selector}={'/'.join(owners)}{what}, not of {chosen}; "
        f"{fix}drop it (its keys: {keys})"
    )


def _build(prefix: str, values: dict[str, Any], cls: type, saved: bool) -> Any:
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
        kwargs[key] = _coerce(path, value, fields[key], saved)
    return cls(**kwargs)


def _chosen(section: str, values: dict[str, Any], run: dict[str, Any]) -> type:
    """The class `<section>.<selector>` picks (model.family=gpt -> GPTConfig)."""
    selector = choices.SELECTORS[section]
    options = choices.classes(section)
    choice = values.get(selector)
    if choice is None:
        raise ConfigError(f"{section}.{selector} is required; set it with {section}=<option>")
    if section == "objective" and choice == "auto":  # the family's native: resolved later
        return choices.EXTRA["objective"][0]
    if choice not in options:
        close = difflib.get_close_matches(str(choice), options, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            f"{section}.{selector}={choice!r}: no such {selector}{hint} "
            f"(options: {', '.join(options)})"
        )
    if section == "objective" and choices.OBJECTIVES[choice].composite:
        return choices.composite_class(choice, choices.task_objectives(run.get("tasks") or {}))
    return options[choice]


def chosen_class(name: str, values: dict[str, Any], run: dict[str, Any]) -> Any:
    """The class of top-level key `name` of the composed config `run` (its choice's for a
    choice section, the command's for a command-specific one); None for a plain key."""
    special = COMMAND_CLASSES.get(str(run.get("command", "pretrain")), {}).get(name)
    if special is not None:
        return special
    if name in choices.SELECTORS:
        return _chosen(name, values, run)
    kind = first_class(section_fields(RunConfig)[name])
    is_section = dataclasses.is_dataclass(kind) or typing.get_origin(kind) is dict
    return kind if is_section else None


def first_class(kind: Any) -> Any:
    """A section annotated `A | B` (B for some commands: COMMAND_CLASSES) is an A otherwise."""
    if isinstance(kind, types.UnionType):
        return typing.get_args(kind)[0]
    return kind


def _finetune_model(values: dict[str, Any]) -> FinetuneModel:
    """finetune's model section: its own keys, and any family's keys as expected values."""
    own = section_fields(FinetuneModel)
    families = [section_fields(f.config) for f in FAMILIES.values()]
    kwargs, expected = {}, []
    for key, value in values.items():
        path = f"model.{key}"
        if key in own:
            kwargs[key] = _coerce(path, value, own[key], False)
            continue
        types = [fields[key] for fields in families if key in fields]
        if not types:
            valid = {*own, *(k for fields in families for k in fields)}
            raise ConfigError(f"unknown key '{path}' in 'model'{suggestion(key, valid)}")
        expected.append((key, _coerce(path, value, types[0], False)))
    return FinetuneModel(**kwargs, expected=tuple(expected))


def native_objective(values: dict[str, Any]) -> dict[str, Any]:
    """objective=auto becomes the model family's native objective once the family is known."""
    objective, model = values.get("objective"), values.get("model")
    if not isinstance(objective, dict) or objective.get("name") != "auto":
        return values
    if not isinstance(model, dict) or model.get("family") not in FAMILIES:
        return values
    native = FAMILIES[model["family"]].native_objective
    return {**values, "objective": {**objective, "name": native}}


def _check_sections(command: str, values: dict[str, Any]) -> None:
    """A section the command does not compose is refused: its keys would do nothing."""
    used = layout.command_sections(command)
    sections = {f.name for f in dataclasses.fields(RunConfig)}
    for key in values:
        if key in sections and key not in used:
            raise ConfigError(
                f"{key}: llmtune {command} does not use it (its sections: {', '.join(used)})"
            )


def build_run_config(composed: dict[str, Any], saved: bool = False) -> RunConfig:
    """Validate a resolved, composed config (Hydra's own `hydra` node removed); `saved`: a
    checkpoint's config.yaml (see `_build`)."""
    values = native_objective({k: v for k, v in composed.items() if k != "hydra"})
    command = values.get("command", "pretrain")
    if not saved:
        _check_sections(str(command), values)
    fields = section_fields(RunConfig)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise _unknown_key("", str(key), fields, values)
        special = COMMAND_CLASSES.get(str(command), {}).get(key)
        if value is None:
            raise ConfigError(f"{key} has no value; set it with {key}=<value>")
        if special is FinetuneModel and not saved:
            kwargs[key] = _finetune_model(value)
        elif special is not None and not saved:
            kwargs[key] = _coerce(key, value, special, saved)
        elif key in choices.SELECTORS and isinstance(value, dict):
            kwargs[key] = _build(key, value, _chosen(key, value, values), saved)
        else:
            kwargs[key] = _coerce(key, value, first_class(fields[key]), saved)
    config = resolve_auto(RunConfig(**kwargs))
    validate(config)
    return config
