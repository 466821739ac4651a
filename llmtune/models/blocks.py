"""Transformer building blocks: the KV cache and attention shared by GPT-2, Llama and BERT, and
the GELU MLP and LayerNorm residual block of GPT-2 (pre-LN) and BERT (post-LN).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from llmtune.config.schema import ModelConfig
from llmtune.models.rope import rotate

# One layer's attention keys and values, each [B, Hkv, positions, hd].
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


class DotProductAttention(nn.Module):
    """softmax(q k^T * scale + mask) v with dropout `p` on the weights while training: SDPA as
    a layer, so llmtune/kernels can swap in a faster one from outside, as it does nn.Dropout.
    It holds no parameters, hence no checkpoint keys. `scale` None is 1/sqrt(head width)."""

    def __init__(self, p: float = 0.0, scale: float | None = None) -> None:
        super().__init__()
        self.p, self.scale = p, scale

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """q [B,H,T,hd]; k, v [B,Hkv,S,hd] (Hkv divides H); mask boolean (True = may attend)
        or float (added to the scores), broadcastable to [B,H,T,S]. Returns [B,H,T,hd]."""
        # dropout only while training: SDPA applies dropout_p unconditionally
        return sdpa(q, k, v, mask, self.p if self.training else 0.0, is_causal, self.scale)

    def extra_repr(self) -> str:
        return f"p={self.p}" + ("" if self.scale is None else f", scale={self.scale}")


def sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    p: float,
    is_causal: bool,
    scale: float | None,
) -> torch.Tensor:
    """F.scaled_dot_product_attention; k, v [B,Hkv,S,hd] may have fewer heads than q
    [B,H,T,hd] (grouped-query attention), which SDPA's kernels read in place of a copy
    repeated to H heads."""
    gqa = {"enable_gqa": True} if k.shape[1] != q.shape[1] else {}  # GPT/BERT graphs unchanged
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal, scale=scale, **gqa
    )


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B,Hkv,S,hd] -> [B,Hkv*n_rep,S,hd]: key/value head j serves query heads j*n_rep.."""
    if n_rep == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


class Attention(nn.Module):
    """Self-attention with H query heads sharing Hkv key/value heads (grouped-query attention;
    Hkv = H for GPT-2 and BERT), optional rotary positions (Llama), computed by SDPA.

    The fused `qkv` weight is [(H + 2*Hkv) * hd, D] with rows q, k, v: it maps onto GPT-2's
    `c_attn` (transposed), and splits into BERT's query/key/value and Llama's q/k/v_proj.
    The cache holds the Hkv key/value heads only.
    """

    def __init__(
        self, config: ModelConfig, bias: bool = True, out_bias: bool = True, n_heads: int = 0
    ) -> None:
        super().__init__()
        # a head-pruned block (llmtune prune) keeps n_heads < config.n_heads heads of the same
        # size; without grouped-query attention its key/value heads go with them
        self.n_heads = n_heads or config.n_heads
        grouped = config.kv_heads != config.n_heads
        self.n_kv_heads = config.kv_heads if grouped else self.n_heads
        self.head_size = config.head_size
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}"
            )
        width = (self.n_heads + 2 * self.n_kv_heads) * self.head_size
        self.qkv = nn.Linear(config.d_model, width, bias=bias)
        self.proj = nn.Linear(self.n_heads * self.head_size, config.d_model, bias=out_bias)
        self.sdpa = DotProductAttention(config.attn_dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        past: KV | GrowingKV | None = None,
        use_cache: bool = False,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, KV | GrowingKV]:
        """x [B,T,D]; mask is boolean, True = may attend, broadcastable to [B,H,T,T].

        `past` = (k, v) [B,Hkv,P,hd] of P earlier positions (a generation cache, or learned
        prefixes; rotated already); `mask` covers either the T new keys (past keys are then
        visible to every query) or all P+T keys (padded generation batches). `rope` = (cos,
        sin) [B|1,1,T,hd] rotates the new queries and keys. With `use_cache` returns
        (y, cache): the (k, v) including `past`, or `past` itself when it is a GrowingKV
        (appended in place).
        """
        b, t, _ = x.shape
        h, hkv, hd = self.n_heads, self.n_kv_heads, self.head_size
        # [B,T,(H+2Hkv)*hd] -> q [B,T,H*hd], k and v [B,T,Hkv*hd]
        q, k, v = self.qkv(x).split((h * hd, hkv * hd, hkv * hd), dim=2)
        # [B,T,heads*hd] -> [B,heads,T,hd]: SDPA wants heads before time
        q = q.view(b, t, h, hd).transpose(1, 2)
        k = k.view(b, t, hkv, hd).transpose(1, 2)
        v = v.view(b, t, hkv, hd).transpose(1, 2)
        if rope is not None:  # keys are cached rotated: a cached key keeps its position
            q, k = rotate(q, *rope), rotate(k, *rope)
        cache: KV | GrowingKV = (k, v)
        if past is not None:
            (k, v), cache = with_past(past, k, v)  # [B,Hkv,P+T,hd]
            mask, is_causal = _mask_with_past(mask, is_causal, t, k.shape[2] - t, x.device)
        # each key/value head serves H/Hkv query heads, read in place (no copy to H heads)
        y = self.sdpa(q, k, v, mask, is_causal)  # [B,H,T,hd]
        # [B,H,T,hd] -> [B,T,H,hd] -> [B,T,H*hd] -> [B,T,D]
        y = self.proj(y.transpose(1, 2).reshape(b, t, h * hd))
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
        self.attn = Attention(config, n_heads=n_heads)  # 0: config.n_heads
        self.ln_mlp = nn.LayerNorm(config.d_model, eps=eps)
        self.mlp = MLP(config, approximate)
        self.dropout = nn.Dropout(config.dropout)

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


def run_blocks(
    blocks: nn.ModuleList,
    x: torch.Tensor,
    attend: tuple[torch.Tensor | None, bool],
    past: Sequence[KV | GrowingKV] | None,
    use_cache: bool,
    **block_kwargs: object,
) -> tuple[torch.Tensor, list[KV | GrowingKV]]:
    """x [B,T,D] through every block with `attend` = (mask, is_causal) and the block's entry
    of `past`; `block_kwargs` go to every block (Llama's rotary tables). Returns (x [B,T,D],
    one cache entry per block, empty without `use_cache`)."""
    mask, is_causal = attend
    cache: list[KV | GrowingKV] = []
    for i, block in enumerate(blocks):
        layer_past = None if past is None else past[i]
        if not use_cache:  # training: a block under FSDP returns one fresh tensor, no views
            x = block(x, mask, is_causal, layer_past, **block_kwargs)
            continue
        x, kv = block(x, mask, is_causal, layer_past, use_cache=True, **block_kwargs)
        cache.append(kv)
    return x, cache
