"""Which parameters train: the fine-tuning methods by name (method.name), each with its own
config class, applied to a built model from the outside; and counting what trains."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from llmtune.adapters.freeze import FreezeConfig, freeze_layers
from llmtune.adapters.lora import LoraConfig, apply_lora
from llmtune.adapters.prefix import PrefixConfig, attach_prefix
from llmtune.adapters.prompt import PromptConfig, attach_prompt
from llmtune.config.schema import MethodConfig
from llmtune.errors import ConfigError
from llmtune.models.heads import TASK_HEADS


@dataclass(frozen=True)
class Method:
    """A registry entry: a method's config class, what it adds to a built model
    (`attach(model, cfg, seed)`), and whether it trains only what it adds (an adapter: the
    pretrained weights freeze, new task heads train, checkpoints hold only the trained
    weights plus the base's path and checksum)."""

    name: str
    config: type[MethodConfig]
    attach: Callable[[nn.Module, Any, int], None]
    adapter: bool


def _nothing(model: nn.Module, cfg: MethodConfig, seed: int) -> None:
    """full: every weight trains as built."""


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("full", MethodConfig, _nothing, adapter=False),
        Method("freeze", FreezeConfig, lambda m, c, s: freeze_layers(m, c.freeze_layers), False),
        Method(
            "lora",
            LoraConfig,
            lambda m, c, s: apply_lora(m, c.rank, c.alpha, c.dropout, c.targets),
            adapter=True,
        ),
        Method("prefix", PrefixConfig, lambda m, c, s: attach_prefix(m, c.n_tokens), True),
        Method(
            "prompt",
            PromptConfig,
            lambda m, c, s: attach_prompt(m, c.n_tokens, c.prompt_encoder, c.encoder_hidden, s),
            adapter=True,
        ),
    )
}
# Methods whose checkpoints hold only the trained weights plus a reference to the base.
ADAPTER_METHODS = tuple(name for name, m in METHODS.items() if m.adapter)


def apply_method(model: nn.Module, method: MethodConfig, seed: int = 0) -> None:
    """Adapt `model` in place: add adapter modules and choose which parameters train.

    full trains everything; freeze stops the embeddings and bottom layers; lora, prefix and
    prompt freeze the whole pretrained model and train their adapter plus any new task head.
    """
    if method.name not in METHODS:
        raise ConfigError(f"method.name={method.name!r}: expected one of {', '.join(METHODS)}")
    entry = METHODS[method.name]
    if entry.adapter:
        model.requires_grad_(False)
    entry.attach(model, method, seed)
    if entry.adapter:
        for name in TASK_HEADS:  # new and small: they train in full
            if name in model.heads:
                model.heads[name].requires_grad_(True)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(
            f"method={method.name} leaves no parameter to train (a tied LM head freezes with the "
            "embeddings); freeze fewer layers (method.freeze_layers=N)"
        )


def parameter_summary(model: nn.Module) -> str:
    """'trainable 0.15M / 22.7M (0.66%)': distinct parameters, tied ones counted once."""
    seen: dict[int, nn.Parameter] = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in seen.values())
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    digits = 1 if total >= 1e7 else 2
    return (
        f"trainable {trainable / 1e6:.2f}M / {total / 1e6:.{digits}f}M "
        f"({100 * trainable / max(total, 1):.2f}%)"
    )
