"""One source of defaults: every shipped YAML lists every key of its section's class (what a
user reads is what runs), and each class's defaults equal its own YAML (so code that builds
configs directly gets what the YAML says; today's main disagreed on train.max_steps 100/200
and optim.warmup_steps 0/10)."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import pytest
from omegaconf import OmegaConf

from llmtune.adapters import METHODS
from llmtune.config import layout
from llmtune.config.build import chosen_class, section_fields
from llmtune.config.compose import compose
from llmtune.config.schema import (
    DATA_SOURCES,
    CheckpointConfig,
    EvaluateConfig,
    ExportConfig,
    FinetuneModel,
    HardwareConfig,
    OptimConfig,
    PruneConfig,
    RunConfig,
    ScoringConfig,
    ServeConfig,
    TokenizerConfig,
    TrainConfig,
)
from llmtune.models import FAMILIES
from llmtune.objectives import OBJECTIVES

COMMANDS = ("pretrain", "finetune", "evaluate", "export", "plan", "report", "serve", "prune")


def _options(command: str) -> list[tuple[str, list[str]]]:
    """(id, overrides): the command's defaults, then each option of each group it uses."""
    cases = [(f"{command}", [])]
    for group in layout.command_groups(command):
        if group in ("experiment", "sweep"):
            continue
        cases += [(f"{command}-{group}={o}", [f"{group}={o}"]) for o in layout.group_options(group)]
    return cases


CASES = [case for command in COMMANDS for case in _options(command)]


@pytest.mark.parametrize(("case", "overrides"), CASES, ids=[c for c, _ in CASES])
def test_every_key_of_every_section_is_in_the_composed_yaml(case: str, overrides: list[str]):
    command = case.split("-")[0]
    values = compose(command, overrides)
    for name in layout.command_sections(command):
        assert name in values, f"{case}: the composed config has no {name}"
        cls = chosen_class(name, values[name] if isinstance(values[name], dict) else {}, values)
        if cls is None or not dataclasses.is_dataclass(cls):
            continue  # a plain key (present: checked above) or tasks.<name>, added by the user
        missing = set(section_fields(cls)) - set(values[name])
        assert not missing, f"{case}: {name} does not list {sorted(missing)} ({cls.__name__})"


def _yaml(path: str, section: str = "") -> dict[str, Any]:
    body = OmegaConf.to_container(OmegaConf.load(layout.CONFIG_DIR / path))
    return body[section] if section else body


def _same(cls: type, values: dict[str, Any], where: str) -> None:
    """`values` (a YAML's) are every key of `cls` and equal its defaults (??? = required)."""
    fields = section_fields(cls)
    assert set(values) == set(fields), f"{where}: keys differ from {cls.__name__}'s"
    defaults = cls()
    for key, value in values.items():
        default = getattr(defaults, key)
        if value == "???":
            continue
        if typing.get_origin(fields[key]) is tuple:
            default = list(default)
        if dataclasses.is_dataclass(default):  # a nested section (model.rope_scaling)
            default = dataclasses.asdict(default)
        assert value == default, f"{where}: {key}={value!r}, {cls.__name__} says {default!r}"


def _canonical() -> list[tuple[str, type, dict[str, Any]]]:
    """(where, class, the YAML values its defaults must equal)."""
    out = [
        (f"objective/{n}.yaml", e.config, _yaml(f"objective/{n}.yaml"))
        for n, e in OBJECTIVES.items()
    ]
    out += [(f"method/{n}.yaml", m.config, _yaml(f"method/{n}.yaml")) for n, m in METHODS.items()]
    out += [(f"data/{n}.yaml", c, _yaml(f"data/{n}.yaml")) for n, c in DATA_SOURCES.items()]
    # a family's defaults are its smallest preset's
    out += [
        (f"model/{n}-tiny.yaml", f.config, _yaml(f"model/{n}-tiny.yaml"))
        for n, f in FAMILIES.items()
    ]
    out += [
        ("tokenizer/auto.yaml", TokenizerConfig, _yaml("tokenizer/auto.yaml")),
        ("optim/adamw.yaml", OptimConfig, _yaml("optim/adamw.yaml")),
        ("hardware/auto.yaml", HardwareConfig, _yaml("hardware/auto.yaml")),
        ("pretrain.yaml train", TrainConfig, _yaml("pretrain.yaml", "train")),
        ("pretrain.yaml checkpoint", CheckpointConfig, _yaml("pretrain.yaml", "checkpoint")),
        ("evaluate.yaml evaluate", EvaluateConfig, _yaml("evaluate.yaml", "evaluate")),
        ("export.yaml export", ExportConfig, _yaml("export.yaml", "export")),
        ("export.yaml evaluate", ScoringConfig, _yaml("export.yaml", "evaluate")),
        ("finetune.yaml model", FinetuneModel, _yaml("finetune.yaml", "model")),
        ("serve.yaml serve", ServeConfig, _yaml("serve.yaml", "serve")),
        ("prune.yaml prune", PruneConfig, _yaml("prune.yaml", "prune")),
        ("prune.yaml evaluate", ScoringConfig, _yaml("prune.yaml", "evaluate")),
    ]
    return out


@pytest.mark.parametrize(
    ("where", "cls", "values"), _canonical(), ids=lambda x: x if isinstance(x, str) else ""
)
def test_class_defaults_equal_their_yaml(where: str, cls: type, values: dict[str, Any]):
    _same(cls, {k: v for k, v in values.items() if k != "defaults"}, where)


def test_top_level_defaults_equal_pretrain_yaml():
    body = _yaml("pretrain.yaml")
    defaults = RunConfig()
    for key in ("command", "seed"):
        assert body[key] == getattr(defaults, key), key
