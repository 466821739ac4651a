"""Fine-tuning methods (full, freeze, lora, prefix, prompt) applied to a built model from
the outside (checkpoints of any method load through llmtune/loading.py)."""

from llmtune.adapters.lora import LoRALinear, adapters_disabled, merge_lora
from llmtune.adapters.method import ADAPTER_METHODS, METHODS, apply_method, parameter_summary

__all__ = [
    "ADAPTER_METHODS",
    "METHODS",
    "LoRALinear",
    "adapters_disabled",
    "apply_method",
    "merge_lora",
    "parameter_summary",
]
