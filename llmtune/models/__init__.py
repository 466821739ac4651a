"""Models: families (GPT-2, BERT, ...) of backbones with named heads, and their HF key maps."""

from llmtune.models.convert import (
    from_hf_state_dict,
    heads_from_hf,
    hf_config_dict,
    load_hf_state_dict,
    model_config_from_hf,
    to_hf_state_dict,
)
from llmtune.models.family import Family, Kind
from llmtune.models.model import LanguageModel, build_model
from llmtune.models.registry import FAMILIES, family

__all__ = [
    "FAMILIES",
    "Family",
    "Kind",
    "LanguageModel",
    "build_model",
    "family",
    "from_hf_state_dict",
    "heads_from_hf",
    "hf_config_dict",
    "load_hf_state_dict",
    "model_config_from_hf",
    "to_hf_state_dict",
]
