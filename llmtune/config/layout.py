"""The shipped configs/ layout: config groups and their options, and the sections and groups
each command composes (read from its primary config, so they cannot drift from the YAML)."""

from __future__ import annotations

import functools
import importlib.resources
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from llmtune.errors import ConfigError

# The top-level configs/ folder, installed as the package llmtune.configs (see setup.py).
CONFIG_DIR = Path(importlib.resources.files("llmtune.configs"))
# groups every command may take besides its own (Hydra's, sweeps, experiments)
_NOT_SECTIONS = ("defaults", "hydra")


def group_options(group: str, dirs: tuple[Path, ...] = ()) -> list[str]:
    """Names of the options of a config group (`model` -> ['bert-base', ...]), shipped and in
    user config directories `dirs` (hydra.searchpath)."""
    found = {p.stem for d in (CONFIG_DIR, *dirs) for p in (d / group).glob("*.yaml")}
    return sorted(found)


def config_groups(dirs: tuple[Path, ...] = ()) -> list[str]:
    """Every config group, shipped and in user config directories `dirs`."""
    found = {
        p.name
        for d in (CONFIG_DIR, *dirs)
        if d.is_dir()
        for p in d.iterdir()
        if p.is_dir() and not p.name.startswith(("_", ".")) and p.name != "hydra"
    }
    return sorted(found)


def experiment_command(name: str, dirs: tuple[Path, ...] = ()) -> str:
    """The command an experiment declares (its `command:` key), or "" when it declares none
    (a user's experiment may not)."""
    for folder in (CONFIG_DIR, *dirs):
        path = folder / "experiment" / f"{name}.yaml"
        if path.is_file():
            body = OmegaConf.load(path)
            return str(body.get("command", "")) if isinstance(body, DictConfig) else ""
    return ""


@functools.cache
def commands() -> tuple[str, ...]:
    """The commands with a primary config: configs/<command>.yaml setting `command:` or
    building on another command's (plan: pretrain's)."""
    found = []
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        body = OmegaConf.load(path)
        if not isinstance(body, DictConfig):
            continue
        bases = [d for d in body.get("defaults", []) if isinstance(d, str)]
        if body.get("command") == path.stem or any(
            (CONFIG_DIR / f"{b}.yaml").is_file() for b in bases
        ):
            found.append(path.stem)
    return tuple(found)


@functools.cache
def builds_on(command: str) -> tuple[str, ...]:
    """The command and those whose primary config its own includes (plan: plan, pretrain):
    it takes their experiments."""
    path = CONFIG_DIR / f"{command}.yaml"
    body = OmegaConf.load(path) if path.is_file() else None
    bases = [d for d in (body or {}).get("defaults", []) if isinstance(d, str)]
    inner = (b for base in bases if base in commands() for b in builds_on(base))
    return tuple(dict.fromkeys([command, *inner]))


@functools.cache
def command_groups(command: str) -> tuple[str, ...]:
    """Config groups the command's primary config selects (pretrain: model, tokenizer, ...)."""
    groups, _ = _primary(command)
    return groups


@functools.cache
def command_sections(command: str) -> tuple[str, ...]:
    """Top-level keys a command's composed config holds: its groups' sections and its own."""
    groups, own = _primary(command)
    return tuple(dict.fromkeys([*own, *(g for g in groups if g not in ("experiment", "sweep"))]))


def _primary(command: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(groups selected, own top-level keys) of configs/<command>.yaml, following a primary
    config it builds on (plan: pretrain)."""
    path = CONFIG_DIR / f"{command}.yaml"
    if not path.is_file():
        raise ConfigError(f"command={command}: no such command (the subcommand sets it)")
    body = OmegaConf.to_container(OmegaConf.load(path))
    groups: list[str] = []
    own = [k for k in body if k not in _NOT_SECTIONS]
    for item in body.get("defaults", []):
        if isinstance(item, str):
            if item != "_self_" and (CONFIG_DIR / f"{item}.yaml").is_file():
                inner_groups, inner_own = _primary(item)
                groups += inner_groups
                own += inner_own
            continue
        for key in item:
            if not key.startswith(("override ", "hydra")):
                groups.append(key)
    return tuple(dict.fromkeys(groups)), tuple(dict.fromkeys(own))
