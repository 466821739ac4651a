"""Training objectives, one registry entry each (objectives/registry.py): each builds its
own examples and targets and returns summed loss terms."""

from llmtune.objectives.base import Objective, TermResult
from llmtune.objectives.entry import Built, Context, ObjectiveEntry, Scoring
from llmtune.objectives.registry import OBJECTIVES, build_objective, entry

__all__ = [
    "OBJECTIVES",
    "Built",
    "Context",
    "Objective",
    "ObjectiveEntry",
    "Scoring",
    "TermResult",
    "build_objective",
    "entry",
]
