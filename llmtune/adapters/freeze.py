"""Freezing: the embeddings plus the bottom N blocks keep their pretrained values, or
everything but the task heads when N is -1 (a linear probe on the backbone's features)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from llmtune.config.schema import MethodConfig
from llmtune.errors import ConfigError


@dataclass(frozen=True)
class FreezeConfig(MethodConfig):
    """Freeze the embeddings and the bottom blocks; the rest trains in full."""

    name: str = "freeze"  # full | freeze | lora | prefix | prompt
    freeze_layers: int = -1  # embeddings + this many bottom blocks; -1 = all but the heads

    def check(self) -> None:
        if self.freeze_layers < -1:
            raise ConfigError(f"method.freeze_layers={self.freeze_layers}: -1 (all) or >= 0")


def freeze_layers(model: nn.Module, n_layers: int) -> list[str]:
    """Set requires_grad=False on the embeddings and blocks[:n_layers] (-1 = whole backbone).

    Returns the frozen parameter names. Tied output heads share the token table, so they
    freeze with it.
    """
    backbone = model.backbone
    total = len(backbone.blocks)
    if n_layers > total:
        raise ConfigError(
            f"method.freeze_layers={n_layers}: the model has only {total} layers; "
            f"use 0..{total} or -1 (all but the heads)"
        )
    frozen = []
    for name, param in backbone.named_parameters():
        top = name.split(".")[0]
        in_blocks = top == "blocks" and int(name.split(".")[1]) < n_layers
        is_embedding = top in ("tok_emb", "pos_emb", "type_emb", "emb_ln")
        if n_layers == -1 or in_blocks or is_embedding:
            param.requires_grad_(False)
            frozen.append(f"backbone.{name}")
    return frozen
