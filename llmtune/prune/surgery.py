"""Structured pruning that leaves a normal model: whole blocks removed (n_layers smaller) and
the same number of MLP neurons removed from every block (d_ff smaller), the kept weights
copied into a model built from the smaller config, so it saves, loads, fine-tunes and
exports like any other."""

from __future__ import annotations

import dataclasses
import re

import torch
from torch import Tensor

from llmtune.models import LanguageModel, build_model

_BLOCK = re.compile(r"^backbone\.blocks\.(\d+)\.(.*)$")


def pruned(
    model: LanguageModel, keep_blocks: list[int], keep_neurons: list[Tensor], n_labels: int
) -> LanguageModel:
    """A new model holding blocks `keep_blocks` (in order) of `model`, each block i keeping
    the MLP neurons `keep_neurons[i]` (sorted indices, the same count in every block)."""
    d_ff = len(keep_neurons[0])
    config = dataclasses.replace(model.config, n_layers=len(keep_blocks), d_ff=d_ff)
    small = build_model(config, tuple(model.heads), n_labels)
    state = {}
    for key, value in model.state_dict().items():
        found = _BLOCK.match(key)
        if found is None:
            state[key] = value
            continue
        old, rest = int(found.group(1)), found.group(2)
        if old not in keep_blocks:
            continue
        state[f"backbone.blocks.{keep_blocks.index(old)}.{rest}"] = _neurons(
            rest, value, keep_neurons[old]
        )
    small.load_state_dict(state, strict=True)
    return small.eval()


def _neurons(name: str, value: Tensor, keep: Tensor) -> Tensor:
    """The kept neurons' rows of mlp.fc (weight [d_ff, D], bias) and columns of mlp.proj."""
    if name in ("mlp.fc.weight", "mlp.fc.bias"):
        return value.index_select(0, keep).clone()
    if name == "mlp.proj.weight":
        return value.index_select(1, keep).clone()
    return value


def keep_blocks(scores: list[float], n_remove: int) -> list[int]:
    """Blocks to keep: all but the `n_remove` whose removal raised the loss least."""
    drop = set(sorted(range(len(scores)), key=lambda i: scores[i])[:n_remove])
    return [i for i in range(len(scores)) if i not in drop]


def keep_neurons(scores: list[Tensor], n_keep: int) -> list[Tensor]:
    """Per block, the `n_keep` most important neurons, in their original order."""
    return [torch.sort(torch.topk(s, n_keep).indices).values for s in scores]
