"""Sections whose keys depend on a choice: model.family picks the family's config class,
objective.name the objective's, method.name the method's, data.source the source's.

Each registry (models/registry.py, objectives/registry.py, adapters/method.py, the data
sources in schema.py) declares the classes; this module only looks them up.
"""

from __future__ import annotations

import dataclasses

from llmtune.config.schema import FinetuneModel
from llmtune.models.registry import FAMILIES

# section -> the key that picks its class
SELECTORS = {"model": "family"}
# classes a section may also take: finetune's model section (the checkpoint is the choice)
EXTRA = {"model": (FinetuneModel,)}


def classes(section: str) -> dict[str, type]:
    """Choice -> config dataclass of a choice section (empty for other sections)."""
    if section == "model":
        return {name: f.config for name, f in FAMILIES.items()}
    return {}


def owners(section: str, key: str) -> list[str]:
    """The choices of `section` whose class has `key` (to say where a foreign key belongs)."""
    return [
        choice
        for choice, cls in classes(section).items()
        if key in {f.name for f in dataclasses.fields(cls)}
    ]
