"""bf16 on CPUs without bf16 matmul instructions: products of bf16 values computed in fp32.

Without AVX512-BF16 or AMX, oneDNN's bf16 matmul falls back to a kernel that reaches 0.3-1.5
GFLOP/s where fp32 reaches 40-70 on the same cores (a 30x to 200x gap). Hardware bf16 units
multiply bf16 operands exactly and accumulate in fp32; an fp32 matmul of bf16-rounded operands
does the same arithmetic. So under bf16 autocast on such a CPU every product (linear, matmul,
attention) rounds its operands to bf16, multiplies in fp32 and rounds the result to bf16:
bf16 numerics at fp32 speed. Linear layers keep their saved inputs in bf16, as autocast does.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from llmtune.kernels.cpu_features import native_bf16_matmul
from llmtune.kernels.dropout import cpu_sdpa

BF16 = torch.bfloat16


def bf16_via_fp32(device_type: str, dtype: torch.dtype | None) -> bool:
    """Whether products in `dtype` on this device run as fp32 products of bf16-rounded operands."""
    return device_type == "cpu" and dtype == BF16 and not native_bf16_matmul()


def bf16_products(device_type: str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Bf16ViaFp32 where `bf16_via_fp32` holds, else a no-op: nothing intercepts fp32, GPU or
    native-bf16 work."""
    return Bf16ViaFp32() if bf16_via_fp32(device_type, dtype) else contextlib.nullcontext()


def _round(x: Tensor) -> Tensor:
    """x with bf16 values held in fp32 (exactly representable: the product is then exact)."""
    return x.to(BF16).float()


class _Linear(torch.autograd.Function):
    """F.linear of bf16 operands in fp32 arithmetic; saves the bf16 operands for backward."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.linear(x.float(), weight.float(), None if bias is None else bias.float()).to(BF16)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        g = grad.float()
        grad_x = (g @ weight.float()).to(BF16) if ctx.needs_input_grad[0] else None
        grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            grad_w = (g.flatten(0, -2).t() @ x.flatten(0, -2).float()).to(BF16)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.flatten(0, -2).sum(0).to(BF16)
        return grad_x, grad_w, grad_b


def _linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    return _Linear.apply(input.to(BF16), weight.to(BF16), None if bias is None else bias.to(BF16))


def _product(func):
    """matmul, mm, bmm: small or gradient-free in llmtune's models, so plain autograd will do."""

    def run(a: Tensor, b: Tensor) -> Tensor:
        return func(_round(a), _round(b)).to(BF16)

    return run


def _attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **rest) -> Tensor:
    """SDPA's arguments; `rest` holds scale, and enable_gqa, which cpu_sdpa reads from the
    head counts of q and k."""
    q, k, v = _round(q), _round(k), _round(v)
    mask = attn_mask if attn_mask is None or attn_mask.dtype == torch.bool else _round(attn_mask)
    # fp32 with autocast off: kernels/dropout.py's cheaper CPU dropout path applies
    return cpu_sdpa(q, k, v, mask, is_causal, dropout_p, rest.get("scale")).to(BF16)


_HANDLERS = {
    F.linear: _linear,
    torch.matmul: _product(torch.matmul),
    Tensor.matmul: _product(torch.matmul),
    Tensor.__matmul__: _product(torch.matmul),
    torch.mm: _product(torch.mm),
    Tensor.mm: _product(torch.mm),
    torch.bmm: _product(torch.bmm),
    Tensor.bmm: _product(torch.bmm),
    F.scaled_dot_product_attention: _attention,
}


def _wants_bf16(args: tuple, kwargs: dict) -> bool:
    """A product runs in bf16 when autocast says so or an operand already is bf16 (code that
    casts by hand, e.g. the chunked cross-entropy), and only for CPU tensors."""
    tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)]
    floats = [t for t in tensors if t.is_floating_point()]
    if not floats or any(t.device.type != "cpu" for t in tensors) or "out" in kwargs:
        return False
    if any(t.dtype not in (torch.float32, BF16) for t in floats):  # fp64 stays fp64
        return False
    autocast = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == BF16
    return autocast or any(t.dtype == BF16 for t in tensors)


class Bf16ViaFp32(TorchFunctionMode):
    """Routes the products in _HANDLERS through fp32 arithmetic; everything else passes."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        handler = _HANDLERS.get(func)
        if handler is None or not _wants_bf16(args, kwargs):
            return func(*args, **kwargs)
        with torch.autocast("cpu", enabled=False):
            return handler(*args, **kwargs)
