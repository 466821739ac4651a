"""Models: GPT-2 and BERT backbones with named heads, and the Hugging Face key map."""

from llmtune.models.convert import (
    from_hf_state_dict,
    heads_from_hf,
    hf_config_dict,
    load_hf_state_dict,
    model_config_from_hf,
    to_hf_state_dict,
)
from llmtune.models.model import ALL_HEADS, HEADS_BY_FAMILY, LanguageModel, build_model

__all__ = [
    "ALL_HEADS",
    "HEADS_BY_FAMILY",
    "LanguageModel",
    "build_model",
    "from_hf_state_dict",
    "heads_from_hf",
    "hf_config_dict",
    "load_hf_state_dict",
    "model_config_from_hf",
    "to_hf_state_dict",
]
