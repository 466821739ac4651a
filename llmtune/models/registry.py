"""THE list of model families: adding a family is its module plus one name here."""

from __future__ import annotations

import difflib

from llmtune.config.schema import ModelConfig
from llmtune.errors import ConfigError
from llmtune.models.bert import BERT
from llmtune.models.family import Family, Kind
from llmtune.models.gpt import GPT
from llmtune.models.llama import LLAMA
from llmtune.models.t5 import T5

FAMILIES: dict[str, Family] = {f.name: f for f in (BERT, GPT, LLAMA, T5)}


def family(name: str) -> Family:
    """The registered family `name`, or a one-line error naming the closest one."""
    if name in FAMILIES:
        return FAMILIES[name]
    close = difflib.get_close_matches(name, FAMILIES, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ConfigError(
        f"model.family={name!r}: no such family{hint} (families: {', '.join(FAMILIES)})"
    )


def model_config(name: str, **keys: object) -> ModelConfig:
    """The config of family `name` with `keys` set (the others at the family's defaults)."""
    return family(name).config(**keys)


def names_of_kind(*kinds: Kind) -> str:
    """'gpt/llama': the families of those kinds, as error messages name what would fit."""
    return "/".join(f.name for f in FAMILIES.values() if f.kind in kinds)
