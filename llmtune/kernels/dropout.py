"""Dropout for CPU training: residual dropout and attention with dropout, with a cheap mask,
as layers that `apply_kernels` puts in place of nn.Dropout and blocks.DotProductAttention.

torch draws one float per element for a dropout mask, which on a CPU costs more than the
attention matmuls it guards; here each element gets 16 bits from a 64-bit random word.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from llmtune.kernels.cpu_features import native_bf16_matmul
from llmtune.models.blocks import DotProductAttention, repeat_kv, sdpa

_LEVELS = 1 << 16  # a dropout probability is rounded to a multiple of 1/65536


def keep_mask(shape: torch.Size | tuple[int, ...], p: float) -> tuple[torch.Tensor, float]:
    """A boolean mask of `shape`, False with probability p (rounded to 1/65536), and the
    factor 1/(1-p) that keeps the expected value of what survives."""
    n = math.prod(shape)
    # random_(int64 min, None) is torch's full 64-bit range; plain random_() leaves the sign
    # bit at 0, which would make every fourth 16-bit lane biased
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)
    dropped = round(p * _LEVELS)
    keep = words.view(torch.int16)[:n].view(shape) >= dropped - _LEVELS // 2
    return keep, _LEVELS / (_LEVELS - dropped)


def cheap_dropout_applies(x: torch.Tensor, p: float, training: bool) -> bool:
    """CPU training only (CUDA's dropout kernels are fused). Attention takes this path in
    fp32, and in bf16: under autocast on a CPU with bf16 units (its products in bf16), and
    through kernels/bf16.py elsewhere, which calls it with fp32 copies and autocast off."""
    return training and p > 0 and x.device.type == "cpu"


def _autocast_dtype() -> torch.dtype | None:
    """The CPU autocast dtype in force, or None."""
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None


def _cheap_attention_applies(q: torch.Tensor, p: float) -> bool:
    if not cheap_dropout_applies(q, p, True):
        return False
    autocast = _autocast_dtype()
    if autocast is None:
        return q.dtype == torch.float32
    # without bf16 units kernels/bf16.py sends SDPA here again, in fp32 with autocast off
    return autocast == torch.bfloat16 and native_bf16_matmul()


class CpuDropout(nn.Dropout):
    """nn.Dropout whose CPU mask comes from `keep_mask` (about 3x faster per element)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not cheap_dropout_applies(x, self.p, self.training):
            return super().forward(x)
        keep, scale = keep_mask(x.shape, self.p)
        return torch.where(keep, x, 0.0).mul_(scale)  # backward keeps only the 1-byte mask


def attention_with_dropout(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    is_causal: bool,
    p: float,
    scale: float | None = None,
) -> torch.Tensor:
    """What SDPA computes with dropout_p=p, for CPU fp32 (where SDPA has no fused kernel with
    dropout and falls back to its unfused path). q [B,H,T,Dh]; k, v [B,H,S,Dh]; mask bool
    (True = may attend) or float (added to the scores, e.g. T5's position bias, and then it
    receives a gradient), broadcastable to [B,H,T,S]; `scale` defaults to 1/sqrt(Dh). Rows
    that may attend nothing get a uniform average instead of SDPA's zeros; no model here
    builds such a row."""
    bias = None
    if is_causal:
        t = q.shape[-2]
        mask = torch.ones(t, t, dtype=torch.bool).tril_()
    if mask is not None and mask.is_floating_point():
        bias = mask
    elif mask is not None:
        bias = torch.zeros(mask.shape, dtype=q.dtype).masked_fill_(~mask, torch.finfo(q.dtype).min)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return _AttentionWithDropout.apply(q, k, v, bias, p, scale)


class _AttentionWithDropout(torch.autograd.Function):
    """softmax(q k^T * scale + bias) with dropout, times v. Saves q, k, v (views of the
    q/k/v projection), the probabilities and the 1-byte keep mask; the dropped probabilities
    are recomputed in backward."""

    @staticmethod
    def forward(ctx, q, k, v, bias, p, scale):  # noqa: ANN001, ANN205 (autograd.Function)
        # scaling q rather than the scores: [B,H,T,Dh] is smaller than [B,H,T,S]
        scores = torch.matmul(q * scale, k.transpose(-1, -2))
        if bias is not None:
            scores.add_(bias)
        probs = torch.softmax(scores, dim=-1)
        del scores
        keep, keep_scale = keep_mask(probs.shape, p)
        # 1/(1-p) is applied to the [..,T,Dh] result rather than to every weight
        y = torch.matmul(torch.where(keep, probs, 0.0), v).mul_(keep_scale)
        ctx.save_for_backward(q, k, v, probs, keep)
        ctx.keep_scale, ctx.scale = keep_scale, scale
        ctx.bias_shape = None if bias is None else bias.shape
        return y

    @staticmethod
    def backward(ctx, dy):  # noqa: ANN001, ANN205
        q, k, v, probs, keep = ctx.saved_tensors
        dv = torch.matmul(torch.where(keep, probs, 0.0).transpose(-1, -2), dy).mul_(ctx.keep_scale)
        d_probs = torch.matmul(dy, v.transpose(-1, -2)).mul_(keep)
        d_scores = torch.ops.aten._softmax_backward_data(d_probs, probs, -1, probs.dtype)
        del d_probs
        # d_probs lacks the 1/(1-p) factor: it is folded into the products below instead of
        # a pass over [B,H,T,S]. A float bias (T5's learned position bias) gets the scores'
        # gradient summed over the dimensions it was broadcast along.
        d_bias = None
        if ctx.needs_input_grad[3]:
            d_bias = d_scores.sum_to_size(ctx.bias_shape).mul_(ctx.keep_scale)
        scale = ctx.keep_scale * ctx.scale
        dq = torch.matmul(d_scores, k).mul_(scale)
        dk = torch.matmul(d_scores.transpose(-1, -2), q).mul_(scale)
        return dq, dk, dv, d_bias, None, None


def cpu_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    is_causal: bool,
    p: float,
    scale: float | None = None,
) -> torch.Tensor:
    """SDPA, except CPU attention with dropout (fp32, or bf16 under autocast on bf16 units),
    which goes through the cheaper mask. k and v may have fewer heads than q (grouped).

    `scale` multiplies q k^T (default 1/sqrt(Dh)); T5 passes 1.0, its init absorbs it."""
    if _cheap_attention_applies(q, p):
        # grouped key/value heads repeated to every query head: the cheap path goes head by head
        groups = q.shape[1] // k.shape[1]
        k, v = repeat_kv(k, groups), repeat_kv(v, groups)  # a no-op for 1 group
        dtype = _autocast_dtype()
        if dtype is None:
            return attention_with_dropout(q, k, v, mask, is_causal, p, scale)
        # what autocast does for SDPA (its operands in the autocast dtype), without SDPA's
        # unfused dropout path: a float per weight from bernoulli_, and three saved copies
        with torch.autocast("cpu", enabled=False):
            q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
            return attention_with_dropout(q, k, v, mask, is_causal, p, scale)
    return sdpa(q, k, v, mask, p, is_causal, scale)


class CpuDotProductAttention(DotProductAttention):
    """blocks.DotProductAttention whose CPU dropout on the weights uses `keep_mask` (fp32,
    and bf16 on CPUs with bf16 units)."""

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        p = self.p if self.training else 0.0
        return cpu_sdpa(q, k, v, mask, is_causal, p, self.scale)
