"""Which parameters train: apply a fine-tuning method to a built model, and count them."""

from __future__ import annotations

from torch import nn

from llmtune.adapters.freeze import freeze_layers
from llmtune.adapters.lora import apply_lora
from llmtune.adapters.prefix import attach_prefix
from llmtune.adapters.prompt import attach_prompt
from llmtune.config.schema import MethodConfig
from llmtune.errors import ConfigError

# Methods whose checkpoints hold only the trained weights plus a reference to the base.
ADAPTER_METHODS = ("lora", "prefix", "prompt")
# Heads that a parameter-efficient method still trains in full (they are new and small).
TRAINED_HEADS = ("seq_cls", "token_cls", "reward", "value")


def apply_method(model: nn.Module, method: MethodConfig, seed: int = 0) -> None:
    """Adapt `model` in place: add adapter modules and choose which parameters train.

    full trains everything; freeze stops the embeddings and bottom layers; lora, prefix and
    prompt freeze the whole pretrained model and train their adapter plus any new task head.
    """
    if method.name == "full":
        return
    if method.name == "freeze":
        freeze_layers(model, method.freeze_layers)
    else:
        model.requires_grad_(False)
        if method.name == "lora":
            apply_lora(model, method.rank, method.alpha, method.dropout, method.targets)
        elif method.name == "prefix":
            attach_prefix(model, method.n_tokens)
        elif method.name == "prompt":
            attach_prompt(
                model, method.n_tokens, method.prompt_encoder, method.encoder_hidden, seed
            )
        else:
            raise ConfigError(
                f"method.name={method.name!r}: expected full, freeze, {ADAPTER_METHODS}"
            )
        for name in TRAINED_HEADS:
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
