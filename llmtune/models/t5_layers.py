"""T5's layers: RMS norm, relative position buckets, self/cross attention, feed-forward, blocks.

Wired into an encoder-decoder by models/t5.py. Attention is unscaled (T5 folds 1/sqrt(d_kv)
into the query init) and takes the position bias as an additive float mask.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llmtune.config.schema import ModelConfig
from llmtune.errors import ConfigError
from llmtune.models.blocks import DotProductAttention

FEED_FORWARDS = ("relu", "gated-gelu")


@dataclass(frozen=True)
class T5Config(ModelConfig):
    """A T5 architecture. The default is the v1.1 recipe (gated-GELU feed-forward, untied
    output projection): Flan-T5 and mT5 ship that layout, and Shazeer (2020, "GLU Variants
    Improve Transformer") measured lower perplexity for GEGLU at equal parameters and compute.
    `feed_forward: relu` with `tie_embeddings: true` is the original T5 (v1.0, t5-small).
    n_layers counts encoder blocks; max_seq_len is the encoder's input length.
    """

    family: str = "t5"  # registered family name (models/registry.py)
    d_model: int = 64  # width of the residual stream (defaults: the t5-tiny preset)
    n_heads: int = 4  # attention heads per block
    d_ff: int = 128  # hidden width of each feed-forward
    max_seq_len: int = 64  # encoder input length (span corruption fills it exactly)
    n_decoder_layers: int = 0  # decoder blocks; 0 = as many as n_layers
    d_kv: int = 16  # per-head width; n_heads * d_kv need not equal d_model
    tie_embeddings: bool = False  # true: the LM head is the embedding, outputs scaled d^-0.5
    feed_forward: str = "gated-gelu"  # relu (v1.0) | gated-gelu (v1.1)
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    norm_eps: float = 1e-6  # epsilon of every RMS norm

    @property
    def decoder_layers(self) -> int:
        return self.n_decoder_layers or self.n_layers

    @property
    def max_positions(self) -> int:
        """Relative position buckets: no table limits the length (memory does)."""
        return 1 << 20

    def check(self) -> None:
        """One-line ConfigErrors for values that would build a broken model. Unlike the
        other families, n_heads need not divide d_model: heads are d_kv wide."""
        if self.feed_forward not in FEED_FORWARDS:
            raise ConfigError(
                f"model.feed_forward={self.feed_forward!r} is unknown; use relu or gated-gelu"
            )
        for key in ("d_model", "n_layers", "n_heads", "d_kv", "d_ff", "max_seq_len"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"model.{key}={getattr(self, key)}: must be positive")
        if self.n_decoder_layers < 0:
            raise ConfigError("model.n_decoder_layers must be >= 0 (0 = as many as n_layers)")
        buckets = self.relative_attention_num_buckets
        if buckets < 4 or buckets % 2:
            raise ConfigError(
                f"model.relative_attention_num_buckets={buckets}: must be even and >= 4"
            )
        # the encoder's log-spaced buckets start at distance buckets/4 and must end beyond it
        if self.relative_attention_max_distance <= buckets // 2:
            raise ConfigError(
                "model.relative_attention_max_distance must exceed relative_attention_num_buckets/2"
            )
        for key in ("dropout", "attn_dropout"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"model.{key}={getattr(self, key)}: must be in [0, 1)")


# One layer's attention keys and values, each [B, H, positions, d_kv].
KV = tuple[torch.Tensor, torch.Tensor]


class RMSNorm(nn.Module):
    """T5's layer norm: x / rms(x) * weight; no mean subtraction, no bias. Statistics in fp32."""

    def __init__(self, d_model: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d_model))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + self.eps)).to(self.weight.dtype)


def relative_position_bucket(
    relative: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int
) -> torch.Tensor:
    """Bucket of each relative position (key - query), as Mesh TensorFlow's T5 computes it.

    Bidirectional: half the buckets for keys after the query, half for keys before. Within a
    half, the first half of the buckets are exact distances 0..n/2-1, the rest grow
    logarithmically up to `max_distance`; farther distances share the last bucket. Causal:
    every bucket goes to keys at or before the query (later keys are masked anyway).
    """
    buckets = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative > 0).long() * num_buckets
        distance = relative.abs()
    else:
        distance = (-relative).clamp(min=0)
    max_exact = num_buckets // 2
    # log-spaced buckets for distances in [max_exact, max_distance); clamp(min=1) only keeps
    # the log finite for the small distances that take the exact branch
    log_ratio = torch.log(distance.clamp(min=1).float() / max_exact) / math.log(
        max_distance / max_exact
    )
    large = (max_exact + (log_ratio * (num_buckets - max_exact)).long()).clamp(max=num_buckets - 1)
    return buckets + torch.where(distance < max_exact, distance, large)


class RelativePositionBias(nn.Module):
    """One learned scalar per (bucket, head), added to the attention scores of every layer.

    T5 keeps this table in the first layer only and shares its bias with the others.
    """

    def __init__(self, config: T5Config, bidirectional: bool) -> None:
        super().__init__()
        self.bidirectional = bidirectional
        self.num_buckets = config.relative_attention_num_buckets
        self.max_distance = config.relative_attention_max_distance
        self.table = nn.Embedding(self.num_buckets, config.n_heads)

    def forward(self, n_queries: int, n_keys: int, offset: int = 0) -> torch.Tensor:
        """Bias [1,H,T,S] for queries at positions offset..offset+T-1 and keys at 0..S-1."""
        device = self.table.weight.device
        queries = torch.arange(offset, offset + n_queries, device=device)[:, None]
        keys = torch.arange(n_keys, device=device)[None, :]
        bucket = relative_position_bucket(
            keys - queries, self.bidirectional, self.num_buckets, self.max_distance
        )
        return self.table(bucket).permute(2, 0, 1).unsqueeze(0)  # [T,S,H] -> [1,H,T,S]


def _split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[B,T,H*Dk] -> [B,H,T,Dk]: SDPA wants heads before time."""
    b, t, _ = x.shape
    return x.view(b, t, n_heads, -1).transpose(1, 2)


def _merge_heads(y: torch.Tensor) -> torch.Tensor:
    """[B,H,T,Dk] -> [B,T,H*Dk]."""
    b, h, t, dk = y.shape
    return y.transpose(1, 2).reshape(b, t, h * dk)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused q/k/v projection (rows q, k, v), no biases."""

    def __init__(self, config: T5Config) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        inner = config.n_heads * config.d_kv
        self.qkv = nn.Linear(config.d_model, 3 * inner, bias=False)
        self.proj = nn.Linear(inner, config.d_model, bias=False)
        self.sdpa = DotProductAttention(config.attn_dropout, scale=1.0)
        # prefix tuning (adapters/prefix.py) sets a function batch_size -> (k, v) [B,H,N,Dk]:
        # N learned keys/values every query sees, with no position bias, kept out of the cache
        self.prefix: Callable[[int], KV] | None = None

    def forward(
        self, x: torch.Tensor, bias: torch.Tensor, past: KV | None = None
    ) -> tuple[torch.Tensor, KV]:
        """x [B,T,D]; bias [B|1,H,T,P+T] the additive mask (position bias, padding, causal).

        `past` holds (k, v) of P earlier positions; returns (y, (k, v)) including them.
        """
        q, k, v = (_split_heads(z, self.n_heads) for z in self.qkv(x).chunk(3, dim=-1))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        kv = (k, v)
        if self.prefix is not None:
            pk, pv = self.prefix(x.shape[0])
            k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
            bias = F.pad(bias, (pk.shape[2], 0))  # prefix columns: bias 0, never masked
        y = self.sdpa(q, k, v, bias)
        return self.proj(_merge_heads(y)), kv


class CrossAttention(nn.Module):
    """Decoder queries attending to the encoder output; keys/values come from one fused `kv`."""

    def __init__(self, config: T5Config) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        inner = config.n_heads * config.d_kv
        self.q = nn.Linear(config.d_model, inner, bias=False)
        self.kv = nn.Linear(config.d_model, 2 * inner, bias=False)
        self.proj = nn.Linear(inner, config.d_model, bias=False)
        self.sdpa = DotProductAttention(config.attn_dropout, scale=1.0)

    def memory_kv(self, memory: torch.Tensor) -> KV:
        """Keys and values [B,H,S,Dk] of the encoder output [B,S,D]: computed once per input."""
        k, v = self.kv(memory).chunk(2, dim=-1)
        return _split_heads(k, self.n_heads), _split_heads(v, self.n_heads)

    def forward(self, x: torch.Tensor, kv: KV, mask: torch.Tensor | None) -> torch.Tensor:
        """x [B,T,D]; mask [B,1,1,S] additive (encoder padding) or None. No position bias."""
        q = _split_heads(self.q(x), self.n_heads)
        y = self.sdpa(q, kv[0], kv[1], mask)
        return self.proj(_merge_heads(y))


class FeedForward(nn.Module):
    """relu (T5 v1.0): proj(dropout(relu(fc x))). gated-gelu (v1.1): proj(dropout(gelu(gate x)
    * fc x)), GELU with the tanh approximation as the v1.1 checkpoints were trained."""

    def __init__(self, config: T5Config) -> None:
        super().__init__()
        self.gated = config.feed_forward == "gated-gelu"
        if self.gated:
            self.gate = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.fc = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.proj = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            h = F.gelu(self.gate(x), approximate="tanh") * self.fc(x)
        else:
            h = F.relu(self.fc(x))
        return self.proj(self.dropout(h))


class EncoderBlock(nn.Module):
    """Pre-norm: x + attn(norm x), then x + ff(norm x), each output through dropout."""

    def __init__(self, config: T5Config) -> None:
        super().__init__()
        self.ln_attn = RMSNorm(config.d_model, config.norm_eps)
        self.attn = SelfAttention(config)
        self.ln_mlp = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = FeedForward(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.ln_attn(x), bias)[0])
        return x + self.dropout(self.mlp(self.ln_mlp(x)))


class DecoderBlock(nn.Module):
    """Pre-norm causal self-attention, cross-attention to the encoder, feed-forward."""

    def __init__(self, config: T5Config) -> None:
        super().__init__()
        self.ln_attn = RMSNorm(config.d_model, config.norm_eps)
        self.attn = SelfAttention(config)
        self.ln_cross = RMSNorm(config.d_model, config.norm_eps)
        self.cross_attn = CrossAttention(config)
        self.ln_mlp = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = FeedForward(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        bias: torch.Tensor,
        memory_kv: KV,
        memory_mask: torch.Tensor | None,
        past: KV | None = None,
    ) -> tuple[torch.Tensor, KV]:
        """x [B,T,D]; memory_kv from `cross_attn.memory_kv`; returns (x, self-attention k, v)."""
        a, kv = self.attn(self.ln_attn(x), bias, past)
        x = x + self.dropout(a)
        x = x + self.dropout(self.cross_attn(self.ln_cross(x), memory_kv, memory_mask))
        return x + self.dropout(self.mlp(self.ln_mlp(x))), kv
