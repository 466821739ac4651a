"""Structured pruning that leaves a normal model: whole blocks removed (n_layers smaller), the
same number of MLP neurons removed from every block (d_ff smaller) and attention heads removed
per block (model.layer_heads), the kept weights copied into a model built from the smaller
config, so it saves, loads, fine-tunes and exports like any other."""

from __future__ import annotations

import dataclasses
import re

import torch
from torch import Tensor

from llmtune.models import LanguageModel, build_model

_BLOCK = re.compile(r"^backbone\.blocks\.(\d+)\.(.*)$")


@dataclasses.dataclass(frozen=True)
class Keep:
    """What stays: blocks (in order, by their old index), and per old block the sorted indices
    of its MLP neurons (the same count in every block) and of its attention heads."""

    blocks: list[int]
    neurons: list[Tensor]
    heads: list[Tensor]


def pruned(model: LanguageModel, keep: Keep, n_labels: int) -> LanguageModel:
    """A new model holding what `keep` names of `model`, its other weights unchanged."""
    cfg = model.config
    heads = [len(keep.heads[i]) for i in keep.blocks]
    config = dataclasses.replace(cfg, n_layers=len(keep.blocks), d_ff=len(keep.neurons[0]))
    if cfg.per_block_heads:  # empty while every block has them all: a plain config
        layer_heads = () if all(h == cfg.n_heads for h in heads) else tuple(heads)
        config = dataclasses.replace(config, layer_heads=layer_heads)
    small = build_model(config, tuple(model.heads), n_labels)
    state = {}
    for key, value in model.state_dict().items():
        found = _BLOCK.match(key)
        if found is None:
            state[key] = value
            continue
        old, rest = int(found.group(1)), found.group(2)
        if old in keep.blocks:
            value = _neurons(rest, value, keep.neurons[old])
            value = _heads(rest, value, keep.heads[old], cfg.heads_in(old), cfg.head_size)
            state[f"backbone.blocks.{keep.blocks.index(old)}.{rest}"] = value
    small.load_state_dict(state, strict=True)
    return small.eval()


def everything(model: LanguageModel) -> Keep:
    """A Keep of all of `model` (each pruning step narrows one part of it)."""
    cfg = model.config
    blocks = list(range(cfg.n_layers))
    heads = [torch.arange(cfg.heads_in(i)) for i in blocks]
    return Keep(blocks, [torch.arange(cfg.d_ff)] * cfg.n_layers, heads)


def _neurons(name: str, value: Tensor, keep: Tensor) -> Tensor:
    """The kept neurons' rows of mlp.fc (weight [d_ff, D], bias) and columns of mlp.proj."""
    if name in ("mlp.fc.weight", "mlp.fc.bias"):
        return value.index_select(0, keep).clone()
    if name == "mlp.proj.weight":
        return value.index_select(1, keep).clone()
    return value


def _heads(name: str, value: Tensor, keep: Tensor, n_heads: int, size: int) -> Tensor:
    """The kept heads' rows of attn.qkv (q, k and v each [heads * size] rows) and columns of
    attn.proj."""
    if len(keep) == n_heads:
        return value
    if name in ("attn.qkv.weight", "attn.qkv.bias"):
        parts = value.unflatten(0, (3, n_heads, size))  # q, k, v x heads x head width
        return parts.index_select(1, keep).flatten(0, 2).clone()
    if name == "attn.proj.weight":
        return value.unflatten(1, (n_heads, size)).index_select(1, keep).flatten(1, 2).clone()
    return value


def keep_blocks(scores: list[float], n_remove: int) -> list[int]:
    """Blocks to keep: all but the `n_remove` whose removal raised the loss least."""
    drop = set(sorted(range(len(scores)), key=lambda i: scores[i])[:n_remove])
    return [i for i in range(len(scores)) if i not in drop]


def keep_neurons(scores: list[Tensor], n_keep: int) -> list[Tensor]:
    """Per block, the `n_keep` most important neurons, in their original order."""
    return [torch.sort(torch.topk(s, n_keep).indices).values for s in scores]


def keep_heads(scores: list[Tensor], n_remove: int) -> list[Tensor]:
    """Per block, the heads left after removing the `n_remove` least important of all blocks
    (one global ranking), each block keeping at least its most important head."""
    ranked = sorted(
        ((float(s[h]), b, h) for b, s in enumerate(scores) for h in range(len(s))),
        key=lambda x: x[0],
    )
    left = [len(s) for s in scores]
    drop: set[tuple[int, int]] = set()
    for _, b, h in ranked:
        if len(drop) == n_remove:
            break
        if left[b] > 1:
            drop.add((b, h))
            left[b] -= 1
    return [
        torch.tensor([h for h in range(len(s)) if (b, h) not in drop]) for b, s in enumerate(scores)
    ]
