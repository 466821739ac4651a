"""Fine-tuning methods (full, freeze, lora, prefix, prompt) applied to a built model from
the outside, and `load_model`, which turns any llmtune checkpoint into a ready model."""

from llmtune.adapters.loading import load_model
from llmtune.adapters.lora import LoRALinear, adapters_disabled, merge_lora
from llmtune.adapters.method import ADAPTER_METHODS, TRAINED_HEADS, apply_method, parameter_summary

__all__ = [
    "ADAPTER_METHODS",
    "TRAINED_HEADS",
    "LoRALinear",
    "adapters_disabled",
    "apply_method",
    "load_model",
    "merge_lora",
    "parameter_summary",
]
