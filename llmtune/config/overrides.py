"""Check command-line overrides against the command's groups and the schema before Hydra runs.

Hydra's own messages for a misspelt group option or key are multi-line; checking first
gives one line with the closest valid name. `+key=` additions are checked too, and user
config directories (`hydra.searchpath`) add their options to the ones checked against.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import typing
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException

from llmtune.config import choices, layout
from llmtune.config.build import first_class, section_fields, suggestion
from llmtune.config.schema import COMMAND_CLASSES, RunConfig
from llmtune.config.secrets import refuse_credentials
from llmtune.errors import ConfigError


def _parse(overrides: list[str]) -> list[Override]:
    try:
        return OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"cannot parse overrides: {first}") from None


def search_dirs(parsed: list[Override]) -> tuple[Path, ...]:
    """The user config directories of a `hydra.searchpath=[...]` override (file:// or pkg://)."""
    dirs = []
    for override in parsed:
        if override.key_or_group != "hydra.searchpath":
            continue
        value = override.value()
        for item in value if isinstance(value, list) else [value]:
            text = str(item)
            if text.startswith("pkg://"):
                name = text.removeprefix("pkg://").replace("/", ".")
                try:
                    dirs.append(Path(str(importlib.resources.files(name))))
                except ModuleNotFoundError:
                    raise ConfigError(f"hydra.searchpath: no package '{name}'") from None
            else:
                path = Path(text.removeprefix("file://")).expanduser()
                if not path.is_dir():
                    raise ConfigError(f"hydra.searchpath: '{path}' is not a folder of configs")
                dirs.append(path)
    return tuple(dirs)


def _check_group(command: str, text: str, override: Override, dirs: tuple[Path, ...]) -> None:
    group, used = override.key_or_group, layout.command_groups(command)
    # +<group>=<option> of a user's own group (hydra.searchpath) adds what it holds
    users_own = override.type.name == "ADD" and group not in layout.config_groups()
    if group not in used and not users_own:
        raise ConfigError(
            f"{text}: llmtune {command} has no {group} group (its groups: {', '.join(used)})"
        )
    values = (
        list(override.sweep_string_iterator())
        if override.is_sweep_override()
        else [str(override.value())]
    )
    options = layout.group_options(group, dirs)
    for value in values:
        if value not in options and value != "null":
            raise ConfigError(
                f"{group}={value}: no such option{suggestion(value, options)} "
                f"(options: {', '.join(options)})"
            )
        made_for = layout.experiment_command(value, dirs) if group == "experiment" else ""
        if made_for and made_for not in layout.builds_on(command):
            raise ConfigError(
                f"experiment={value}: configures llmtune {made_for}, not llmtune {command}; "
                f"run `llmtune {made_for} experiment={value}`"
            )


def _fields(command: str, path: str, cls: Any) -> dict[str, Any]:
    """Keys of a section; a choice section takes any choice's keys here (which choice the
    composed config makes is known only after composition; config/build.py checks it)."""
    special = COMMAND_CLASSES.get(command, {}).get(path)
    if path not in choices.SELECTORS:
        return section_fields(special or cls)
    fields = {}
    for option in [*choices.classes(path).values(), *choices.EXTRA.get(path, ())]:
        fields |= section_fields(option)
    return fields


def _check_key(command: str, key: str, dirs: tuple[Path, ...]) -> None:
    parts = key.split(".")
    if parts[0] == "command":
        raise ConfigError(f"{key}: set by the subcommand (llmtune {command}); it is not a key")
    sections = layout.command_sections(command)
    if parts[0] in section_fields(RunConfig) and parts[0] not in sections:
        raise ConfigError(
            f"{key}: llmtune {command} does not use {parts[0]} (its sections: "
            f"{', '.join(sections)})"
        )
    cls: Any = RunConfig
    for depth, part in enumerate(parts):
        if typing.get_origin(cls) is dict:  # tasks.<name>: the name is free, its keys are not
            cls = typing.get_args(cls)[1]
            continue
        prefix = ".".join(parts[:depth])
        fields = _fields(command, prefix, cls) if prefix else section_fields(RunConfig)
        if part not in fields:
            where = f"'{prefix}'" if prefix else "the top level"
            # at the top level: this command's own keys and groups ("command" is not a key)
            top = [*sections, *layout.command_groups(command)]
            valid = fields if prefix else [k for k in dict.fromkeys(top) if k != "command"]
            raise ConfigError(f"unknown key '{key}' in {where}{suggestion(part, valid)}")
        cls = first_class(fields[part])
        path = ".".join(parts[: depth + 1])
        is_section = (
            path in choices.SELECTORS
            or dataclasses.is_dataclass(cls)
            or typing.get_origin(cls) is dict
        )
        if not is_section and depth < len(parts) - 1:
            raise ConfigError(f"'{path}' is a value, not a section")


def check_overrides(command: str, overrides: list[str]) -> list[str]:
    """Check overrides against the command's groups and the schema; return them for Hydra.

    A key the schema knows is passed as `++key=value`: a user's option YAML need not list
    every field of its section (the dataclass supplies defaults, equal to the shipped
    YAML's), so Hydra's own "not in struct" check would wrongly refuse it.
    """
    refuse_credentials(overrides)  # first: nothing after this may echo or record them
    parsed = _parse(overrides)
    dirs = search_dirs(parsed)
    groups = set(layout.config_groups(dirs))
    checked = []
    for text, override in zip(overrides, parsed):
        key = override.key_or_group
        if key.startswith("hydra") or override.package is not None:
            checked.append(text)
        elif key in groups:
            _check_group(command, text, override, dirs)
            checked.append(text)
        else:
            _check_key(command, key, dirs)
            is_plain = override.type.name in ("CHANGE", "ADD")
            checked.append("++" + text.lstrip("+") if is_plain else text)
    return checked
