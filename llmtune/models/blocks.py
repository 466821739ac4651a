"""Transformer building blocks shared by GPT-2 and BERT: attention, MLP and the residual block.

One block class serves both families; `family` picks pre-LN (gpt) or post-LN (bert) wiring.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmtune.config.schema import ModelConfig


class Attention(nn.Module):
    """Multi-head self-attention with a fused q/k/v projection, computed by SDPA.

    The fused `qkv` weight is [3*D, D] with rows ordered q, k, v, so it maps onto GPT-2's
    `c_attn` (transposed) and onto BERT's separate query/key/value by splitting in three.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.d_model % config.n_heads:
            raise ValueError(
                f"d_model {config.d_model} is not divisible by n_heads {config.n_heads}"
            )
        self.n_heads = config.n_heads
        self.attn_dropout = config.attn_dropout
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        """x [B,T,D]; mask is boolean, True = may attend, broadcastable to [B,H,T,T]."""
        b, t, d = x.shape
        # [B,T,3D] -> 3 x [B,T,D] -> [B,H,T,D/H]: SDPA wants heads before time
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2) for z in (q, k, v))
        # dropout only while training: SDPA applies dropout_p unconditionally
        p = self.attn_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal
        )
        # [B,H,T,D/H] -> [B,T,H,D/H] -> [B,T,D]
        y = y.transpose(1, 2).reshape(b, t, d)
        return self.proj(y)


class MLP(nn.Module):
    """Position-wise feed-forward: fc -> GELU -> proj.

    GPT-2 uses the tanh approximation ("gelu_new"), BERT the exact erf GELU; mixing them up
    changes logits by ~1e-3, enough to break exact agreement with the reference weights.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.approximate = "tanh" if config.family == "gpt" else "none"
        self.fc = nn.Linear(config.d_model, config.d_ff)
        self.proj = nn.Linear(config.d_ff, config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate=self.approximate))


class Block(nn.Module):
    """Attention + MLP with residuals. gpt: x + f(LN(x)) (pre-LN); bert: LN(x + f(x)) (post-LN)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.pre_ln = config.family == "gpt"
        self.ln_attn = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.attn = Attention(config)
        self.ln_mlp = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.mlp = MLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        if self.pre_ln:
            x = x + self.dropout(self.attn(self.ln_attn(x), mask, is_causal))
            return x + self.dropout(self.mlp(self.ln_mlp(x)))
        x = self.ln_attn(x + self.dropout(self.attn(x, mask, is_causal)))
        return self.ln_mlp(x + self.dropout(self.mlp(x)))
