"""Prefix tuning (P-tuning v2): trainable keys and values prepended at every layer.

The prefix is exactly a key/value cache of `n_tokens` positions that no token produced, so
it rides on the attention's `past` input (the one generation uses): GPT receives it as the
backbone's `past` (real tokens then take positions P.., as they will during cached
generation); BERT, which has no cache, gets it per attention layer; T5's self-attention
layers (encoder and decoder) each have a prefix slot (models/t5_layers.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from llmtune.config.schema import MethodConfig
from llmtune.errors import ConfigError
from llmtune.models.blocks import KV
from llmtune.models.family import Kind

INIT_STD = 0.02
_ATTN_DEFAULTS = (None, None, False, None)  # Attention.forward's x, mask, is_causal, past


@dataclass(frozen=True)
class PrefixConfig(MethodConfig):
    """P-tuning v2: trainable key/value prefixes at every layer; the rest frozen."""

    name: str = "prefix"  # full | freeze | lora | prefix | prompt
    n_tokens: int = 16  # key/value positions per layer

    @property
    def positions(self) -> int:
        return self.n_tokens

    def check(self) -> None:
        if self.n_tokens <= 0:
            raise ConfigError(f"method.n_tokens={self.n_tokens}: must be positive")


class PrefixKV(nn.Module):
    """Per-layer prefix keys and values: `kv` [L, 2, Hkv, P, head size] (the key/value heads:
    under grouped-query attention fewer than the query heads)."""

    def __init__(self, n_layers: int, n_heads: int, head_size: int, n_tokens: int) -> None:
        super().__init__()
        self.kv = nn.Parameter(torch.empty(n_layers, 2, n_heads, n_tokens, head_size))
        nn.init.normal_(self.kv, std=INIT_STD)

    def forward(self, batch_size: int) -> list[KV]:
        """One (k, v) per layer, each [B, Hkv, P, head size] (expanded, not copied)."""
        shape = (batch_size, *self.kv.shape[2:])
        return [(layer[0].expand(shape), layer[1].expand(shape)) for layer in self.kv]

    def layer(self, i: int, batch_size: int) -> KV:
        """Layer i's (k, v), each [B, H, P, head width]."""
        shape = (batch_size, *self.kv.shape[2:])
        return self.kv[i, 0].expand(shape), self.kv[i, 1].expand(shape)


def _batch_size(args: tuple, kwargs: dict) -> int:
    ids = args[0] if args else kwargs["input_ids"]
    return ids.shape[0]


def attach_prefix(model: nn.Module, n_tokens: int) -> PrefixKV:
    """Add `model.adapter` (a PrefixKV) and the hooks that hand it to the attention layers."""
    cfg, blocks = model.config, list(model.backbone.blocks)
    if getattr(cfg, "layer_heads", None):  # PrefixKV holds one head count for every block
        raise ConfigError(
            f"method=prefix: the model's blocks have different head counts (model.layer_heads="
            f"{list(cfg.layer_heads)}, a head-pruned checkpoint); use method=lora or method=full"
        )
    head_size = cfg.d_kv if model.kind == Kind.ENCODER_DECODER else cfg.head_size
    prefix = PrefixKV(len(blocks), cfg.kv_heads, head_size, n_tokens)
    prefix.to(next(model.parameters()).device)
    model.add_module("adapter", prefix)
    if model.kind == Kind.ENCODER_DECODER:
        # T5's self-attention layers (encoder, then decoder) read a prefix slot: keys/values
        # without position bias that every query sees, kept out of the decoder's cache
        for i, block in enumerate(blocks):
            block.attn.prefix = partial(prefix.layer, i)
        return prefix
    if model.kind == Kind.DECODER:  # its forward takes a KV cache: the prefix is one

        def gpt_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            if len(args) > 2 or kwargs.get("past") is not None:
                return None  # a generation cache already starts with the prefix
            return args, {**kwargs, "past": prefix(_batch_size(args, kwargs))}

        model.backbone.register_forward_pre_hook(gpt_hook, with_kwargs=True)
        return prefix
    for i, block in enumerate(model.backbone.blocks):
        block.attn.register_forward_pre_hook(_layer_hook(prefix, i))
    return prefix


def _layer_hook(prefix: PrefixKV, layer: int):
    """Attention pre-hook: fill the `past` argument (x, mask, is_causal, past, ...) of a layer."""

    def hook(module: nn.Module, args: tuple) -> tuple:
        args = (*args, *_ATTN_DEFAULTS[len(args) :])  # (x, mask, is_causal, past)
        if args[3] is not None:
            return args
        k, v = prefix.kv[layer]  # [H,P,D/H] each
        b = args[0].shape[0]
        past = (k.expand(b, *k.shape), v.expand(b, *v.shape))
        return (*args[:3], past, *args[4:])

    return hook
