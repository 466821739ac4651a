"""Sections whose keys depend on a choice: model.family picks the family's config class,
objective.name the objective's, method.name the method's, data.source the source's.

The registries declare the classes (models/registry.py, objectives/registry.py,
adapters/method.py, DATA_SOURCES in schema.py); this module only looks them up.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from typing import Any

from llmtune.adapters.method import METHODS
from llmtune.config.schema import DATA_SOURCES, FinetuneModel, ObjectiveConfig
from llmtune.errors import ConfigError
from llmtune.models.registry import FAMILIES
from llmtune.objectives.registry import OBJECTIVES

# section -> the key that picks its class
SELECTORS = {"model": "family", "objective": "name", "method": "name", "data": "source"}
# classes a section may also take: finetune's model section (the checkpoint is the choice),
# objective=auto before the family is known
EXTRA: dict[str, tuple[type, ...]] = {"model": (FinetuneModel,), "objective": (ObjectiveConfig,)}


def classes(section: str) -> dict[str, type]:
    """Choice -> config dataclass of a choice section (empty for other sections)."""
    if section == "model":
        return {name: f.config for name, f in FAMILIES.items()}
    if section == "objective":
        return {name: e.config for name, e in OBJECTIVES.items()}
    if section == "method":
        return {name: m.config for name, m in METHODS.items()}
    if section == "data":
        return dict(DATA_SOURCES)
    return {}


def owners(section: str, key: str) -> list[str]:
    """The choices of `section` whose class has `key` (to say where a foreign key belongs)."""
    return [
        choice
        for choice, cls in classes(section).items()
        if key in {f.name for f in dataclasses.fields(cls)}
    ]


def task_objectives(tasks: dict[str, Any]) -> tuple[str, ...]:
    """The objectives of tasks.<name> (its key unless tasks.<name>.objective says otherwise),
    each checked to be a registered objective that is not itself made of tasks."""
    names = []
    allowed = [n for n, e in OBJECTIVES.items() if not e.composite]
    for name, task in tasks.items():
        objective = (task or {}).get("objective") or name
        if objective not in allowed:
            close = _closest(objective, allowed)
            raise ConfigError(
                f"tasks.{name}: no objective '{objective}'{close} (objectives: "
                f"{', '.join(allowed)}; or name the task: tasks.{name}.objective=<objective>)"
            )
        names.append(objective)
    return tuple(names)


def _closest(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


@functools.cache
def composite_class(name: str, parts: tuple[str, ...]) -> type[ObjectiveConfig]:
    """objective=<name> made of the objectives `parts`: its class holds every part's keys (a
    part takes its own when the run is split into tasks)."""
    base = OBJECTIVES[name].config
    fields, seen = [], {f.name for f in dataclasses.fields(base)}
    for part in dict.fromkeys(parts):
        cls = OBJECTIVES[part].config
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name not in seen:
                seen.add(f.name)
                fields.append((f.name, hints[f.name], dataclasses.field(default=f.default)))
    label = "_".join(dict.fromkeys(parts))
    return dataclasses.make_dataclass(
        f"{base.__name__}_{label}", fields, bases=(base,), frozen=True
    )
