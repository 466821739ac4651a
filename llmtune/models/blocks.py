"""Transformer building blocks shared by GPT-2 and BERT: attention, MLP and the residual block.

One block class serves both families; the family passes pre-LN (gpt) or post-LN (bert) wiring
and its GELU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmtune.config.schema import ModelConfig
from llmtune.models.dropout import Dropout, scaled_dot_product_attention

# One layer's attention keys and values, each [B, H, positions, D/H].
KV = tuple[torch.Tensor, torch.Tensor]


class GrowingKV:
    """One layer's generation cache in buffers of `capacity` positions: new keys and values
    are written in place. A cache kept as a tuple is concatenated every step, which copies
    (and reallocates) all of it: a third of a batch-8 decoding step on a small model.

    It reads like a KV tuple (`k, v = cache`, `cache[0]` give the filled views), so code that
    concatenates tuples still computes the right thing with it, only without the saving.
    """

    def __init__(self, past: KV, capacity: int) -> None:
        k, v = past
        b, h, n, d = k.shape
        self.k, self.v = (
            k.new_empty(b, h, max(capacity, n), d),
            v.new_empty(b, h, max(capacity, n), d),
        )
        self.k[:, :, :n], self.v[:, :, :n] = k, v
        self.length = n

    def __getitem__(self, i: int) -> torch.Tensor:
        return (self.k, self.v)[i][:, :, : self.length]

    def __len__(self) -> int:
        return 2

    def append(self, k: torch.Tensor, v: torch.Tensor) -> KV:
        """Write T new positions [B,H,T,Dh] after the filled ones; return all filled (k, v)."""
        end = self.length + k.shape[2]
        if end > self.k.shape[2]:
            raise ValueError(f"generation cache full: {end} positions > capacity {self.k.shape[2]}")
        self.k[:, :, self.length : end], self.v[:, :, self.length : end] = k, v
        self.length = end
        return self[0], self[1]

    def select(self, rows: torch.Tensor) -> GrowingKV:
        """A cache of the given batch rows only (rows that finished generating leave)."""
        out = GrowingKV.__new__(GrowingKV)
        out.k, out.v = self.k.index_select(0, rows), self.v.index_select(0, rows)
        out.length = self.length
        return out


def with_past(past: KV | GrowingKV, k: torch.Tensor, v: torch.Tensor) -> tuple[KV, KV | GrowingKV]:
    """All keys and values (past then new), and the cache to hand back: a GrowingKV grows in
    place; a tuple (a prefix, or a cache built without one) is concatenated."""
    if isinstance(past, GrowingKV):
        return past.append(k, v), past
    kv = (torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2))
    return kv, kv


class Attention(nn.Module):
    """Multi-head self-attention with a fused q/k/v projection, computed by SDPA (see dropout.py).

    The fused `qkv` weight is [3*D, D] with rows ordered q, k, v, so it maps onto GPT-2's
    `c_attn` (transposed) and onto BERT's separate query/key/value by splitting in three.
    """

    def __init__(self, config: ModelConfig, n_heads: int = 0) -> None:
        super().__init__()
        if config.d_model % config.n_heads:
            raise ValueError(
                f"d_model {config.d_model} is not divisible by n_heads {config.n_heads}"
            )
        # a head-pruned block keeps n_heads < config.n_heads heads of the same head size
        self.n_heads = n_heads or config.n_heads
        self.head_size = config.head_size
        self.width = self.n_heads * self.head_size
        self.attn_dropout = config.attn_dropout
        self.qkv = nn.Linear(config.d_model, 3 * self.width)
        self.proj = nn.Linear(self.width, config.d_model)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        past: KV | GrowingKV | None = None,
        use_cache: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, KV | GrowingKV]:
        """x [B,T,D]; mask is boolean, True = may attend, broadcastable to [B,H,T,T].

        `past` = (k, v) [B,H,P,D/H] of P earlier positions (a generation cache, or learned
        prefixes); `mask` covers either the T new keys (past keys are then visible to every
        query) or all P+T keys (padded generation batches). With `use_cache` returns
        (y, cache): the (k, v) including `past`, or `past` itself when it is a GrowingKV
        (appended in place).
        """
        b, t, _ = x.shape
        # [B,T,3W] -> 3 x [B,T,W] -> [B,H,T,W/H] (W = H * head size): heads before time for SDPA
        q, k, v = self.qkv(x).split(self.width, dim=2)
        q, k, v = (z.view(b, t, self.n_heads, self.head_size).transpose(1, 2) for z in (q, k, v))
        cache: KV | GrowingKV = (k, v)
        if past is not None:
            (k, v), cache = with_past(past, k, v)
            mask, is_causal = _mask_with_past(mask, is_causal, t, k.shape[2] - t, x.device)
        # dropout only while training: SDPA applies dropout_p unconditionally
        p = self.attn_dropout if self.training else 0.0
        y = scaled_dot_product_attention(q, k, v, mask, is_causal, p)
        # [B,H,T,W/H] -> [B,T,H,W/H] -> [B,T,W] -> [B,T,D]
        y = self.proj(y.transpose(1, 2).reshape(b, t, self.width))
        return (y, cache) if use_cache else y


def _mask_with_past(
    mask: torch.Tensor | None, is_causal: bool, t: int, n_past: int, device: torch.device
) -> tuple[torch.Tensor | None, bool]:
    """Extend a [.., T, T] mask (or the causal rule) to T + n_past keys; past keys are visible.

    SDPA's `is_causal` aligns the triangle to the top-left corner, which is wrong once there
    are more keys than queries, so the causal rule becomes an explicit mask offset by n_past.
    """
    if mask is None and not is_causal:
        return None, False
    if mask is not None and mask.shape[-1] == t + n_past:  # already covers the past keys
        return mask, False
    if mask is None:
        if t == 1:  # one new query sees every key: no mask at all
            return None, False
        return torch.ones(t, t + n_past, dtype=torch.bool, device=device).tril(n_past), False
    seen = torch.ones((*mask.shape[:-1], n_past), dtype=torch.bool, device=device)
    return torch.cat([seen, mask.bool()], dim=-1), False


class MLP(nn.Module):
    """Position-wise feed-forward: fc -> GELU -> proj.

    GPT-2 uses the tanh approximation ("gelu_new"), BERT the exact erf GELU; mixing them up
    changes logits by ~1e-3, enough to break exact agreement with the reference weights.
    """

    def __init__(self, config: ModelConfig, approximate: str) -> None:
        super().__init__()
        self.approximate = approximate  # "tanh" (GPT-2's gelu_new) | "none" (BERT's erf)
        self.fc = nn.Linear(config.d_model, config.d_ff)
        self.proj = nn.Linear(config.d_ff, config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate=self.approximate))


class Block(nn.Module):
    """Attention + MLP with residuals. pre_ln (gpt): x + f(LN(x)); else (bert): LN(x + f(x))."""

    def __init__(
        self, config: ModelConfig, eps: float, pre_ln: bool, approximate: str, n_heads: int = 0
    ) -> None:
        super().__init__()
        self.pre_ln = pre_ln
        self.ln_attn = nn.LayerNorm(config.d_model, eps=eps)
        self.attn = Attention(config, n_heads)  # 0: config.n_heads
        self.ln_mlp = nn.LayerNorm(config.d_model, eps=eps)
        self.mlp = MLP(config, approximate)
        self.dropout = Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        past: KV | None = None,
        use_cache: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, KV]:
        """x [B,T,D]; `past`/`use_cache` as in `Attention.forward` (returns (x, (k, v)))."""
        a, kv = self.attn(self.ln_attn(x) if self.pre_ln else x, mask, is_causal, past, True)
        if self.pre_ln:
            x = x + self.dropout(a)
            x = x + self.dropout(self.mlp(self.ln_mlp(x)))
        else:
            x = self.ln_attn(x + self.dropout(a))
            x = self.ln_mlp(x + self.dropout(self.mlp(x)))
        return (x, kv) if use_cache else x
