"""Check command-line overrides against the shipped groups and the schema before Hydra runs.

Hydra's own messages for a misspelt group option or key are multi-line; checking first
gives one line with the closest valid name. `+key=` additions are checked too.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import typing
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

from llmtune.config.build import section_fields, suggestion
from llmtune.config.schema import RunConfig
from llmtune.config.secrets import refuse_credentials
from llmtune.errors import ConfigError

# The top-level configs/ folder, installed as the package llmtune.configs (see setup.py).
CONFIG_DIR = Path(importlib.resources.files("llmtune.configs"))


def group_options(group: str) -> list[str]:
    """Names of the shipped options of a config group (`model` -> ['bert-base', ...])."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def config_groups() -> list[str]:
    return sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name != "hydra")


def _check_group_choice(group: str, values: list[str]) -> None:
    options = group_options(group)
    for value in values:
        if value not in options and value != "null":
            raise ConfigError(
                f"{group}={value}: no such option{suggestion(value, options)} "
                f"(options: {', '.join(options)})"
            )


def _check_key(key: str) -> None:
    parts = key.split(".")
    cls: type = RunConfig
    for depth, part in enumerate(parts):
        if typing.get_origin(cls) is dict:  # tasks.<name>: the name is free, its keys are not
            cls = typing.get_args(cls)[1]
            continue
        fields = section_fields(cls)
        if part not in fields:
            prefix = ".".join(parts[:depth])
            where = f"'{prefix}'" if prefix else "the top level"
            valid = fields if prefix else [*fields, *config_groups()]
            raise ConfigError(f"unknown key '{key}' in {where}{suggestion(part, valid)}")
        cls = fields[part]
        is_section = dataclasses.is_dataclass(cls) or typing.get_origin(cls) is dict
        if not is_section and depth < len(parts) - 1:
            raise ConfigError(f"'{'.'.join(parts[: depth + 1])}' is a value, not a section")


def check_overrides(overrides: list[str]) -> list[str]:
    """Check overrides against the shipped groups and the schema; return them for Hydra.

    A key the schema knows is passed as `++key=value`: a chosen option's YAML need not
    list every field of its section (the dataclass supplies defaults), so Hydra's own
    "not in struct" check would wrongly refuse it.
    """
    refuse_credentials(overrides)  # first: nothing after this may echo or record them
    if any(o.lstrip("+~").startswith("hydra.searchpath") for o in overrides):
        return overrides  # user config directories may add options we cannot see here
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"cannot parse overrides: {first}") from None
    groups = set(config_groups())
    checked = []
    for text, override in zip(overrides, parsed):
        key = override.key_or_group
        if key.startswith("hydra") or override.package is not None:
            checked.append(text)
        elif key in groups:
            if override.is_sweep_override():
                values = list(override.sweep_string_iterator())
            else:
                values = [str(override.value())]
            _check_group_choice(key, values)
            checked.append(text)
        else:
            _check_key(key)
            is_plain = override.type.name in ("CHANGE", "ADD")
            checked.append("++" + text.lstrip("+") if is_plain else text)
    return checked
