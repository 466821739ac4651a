"""LoRA: a trainable low-rank update B @ A beside frozen Linear weights, mergeable into them.

B starts at zero, so before the first step the model computes exactly the base model.
Keys stay the base keys (`...attn.qkv.weight`) plus `...attn.qkv.lora_A` / `lora_B`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llmtune.config.schema import MethodConfig
from llmtune.errors import ConfigError


@dataclass(frozen=True)
class LoraConfig(MethodConfig):
    """Rank-r updates beside the frozen Linears named in `targets`; task heads train in full."""

    name: str = "lora"  # full | freeze | lora | prefix | prompt
    rank: int = 8  # rank r of each update B @ A
    alpha: float = 16.0  # the update is scaled by alpha / rank
    dropout: float = 0.05  # dropout on the adapter's input
    targets: tuple[str, ...] = ("qkv", "proj")  # Linear names (qkv, proj, fc, attn.proj)

    def check(self) -> None:
        for key in ("rank", "alpha"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"method.{key}={getattr(self, key)}: must be positive")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"method.dropout={self.dropout}: must be in [0, 1)")
        if not self.targets:
            raise ConfigError("method.targets is empty; name Linear layers, e.g. [qkv,proj]")


class LoRALinear(nn.Linear):
    """y = x W^T + b + scale * dropout(x) A^T B^T, sharing W and b with the Linear it replaces."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float) -> None:
        # built on the meta device: the base's own weight and bias are adopted below
        super().__init__(base.in_features, base.out_features, base.bias is not None, "meta")
        self.weight = base.weight
        self.bias = base.bias
        self.rank, self.scale = rank, alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        # kaiming-uniform A (as nn.Linear and PEFT); B = 0 makes the update start at zero
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout)
        self.enabled = True  # False: compute the base Linear alone (see adapters_disabled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return F.linear(x, self.weight, self.bias)
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)
        return F.linear(x, self.weight, self.bias) + self.scale * update

    def merged(self) -> nn.Linear:
        """A plain Linear with the update folded in: W + scale * B @ A."""
        linear = nn.Linear(self.in_features, self.out_features, self.bias is not None, "meta")
        with torch.no_grad():
            delta = (self.lora_B @ self.lora_A) * self.scale
        linear.weight = nn.Parameter((self.weight + delta).detach(), self.weight.requires_grad)
        linear.bias = self.bias
        return linear


def _matches(name: str, targets: Sequence[str]) -> bool:
    """`qkv` matches every ...attn.qkv; `attn.proj` only the attention output projection."""
    return any(name == t or name.endswith("." + t) for t in targets)


def apply_lora(
    model: nn.Module, rank: int, alpha: float, dropout: float, targets: Sequence[str]
) -> list[str]:
    """Replace the backbone Linears named by `targets` with LoRALinear; return their names."""
    replaced = []
    for name, module in list(model.backbone.named_modules()):
        if type(module) is nn.Linear and _matches(name, targets):
            parent_name, _, child = name.rpartition(".")
            parent = model.backbone.get_submodule(parent_name) if parent_name else model.backbone
            setattr(parent, child, LoRALinear(module, rank, alpha, dropout))
            replaced.append(f"backbone.{name}")
    if not replaced:
        names = sorted(
            {
                n.rsplit(".", 1)[-1]
                for n, m in model.backbone.named_modules()
                if type(m) is nn.Linear
            }
        )
        raise ConfigError(
            f"method.targets={list(targets)} matched no Linear layer; choose from "
            f"{', '.join(names)} (or attn.proj / mlp.proj)"
        )
    return replaced


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRA update into its base weight, leaving plain Linears; returns how many.

    The merged model has the base model's keys and computes the same function as before.
    """
    count = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.merged())
            count += 1
    return count


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """The base model inside the block: every LoRA update off and dropout off (eval mode).

    DPO and PPO use it as their frozen reference, so LoRA runs need no second model copy.
    """
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    was_training = model.training
    model.eval()
    for layer in layers:
        layer.enabled = False
    try:
        yield model
    finally:
        for layer in layers:
            layer.enabled = True
        model.train(was_training)
