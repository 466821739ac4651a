"""Vocabulary projection fused with cross-entropy, in row chunks, never holding all logits.

A GPT step of 8 x 256 tokens over a 50k vocabulary makes [2048, 50257] fp32 logits (412 MB),
then as much again for log-softmax and for each gradient. Here two chunk buffers are reused:
logits -> log-softmax -> softmax in place -> (softmax - one-hot) -> gradients for that chunk,
during the forward; backward only scales the stored gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor

from llmtune.kernels import bf16_via_fp32

# A loss kernel, so it lives with the losses rather than in llmtune/kernels: objectives call it
# in place of the LM head plus F.cross_entropy, it is no layer of the model that apply_kernels
# could swap, and it runs on every device (the logits it never holds are as large on a GPU).

# Logit elements per chunk (fp32: 128 MB): big enough that the weight-gradient accumulation
# (one read-modify-write of the [V, D] matrix per chunk) stays cheap, small enough to matter.
CHUNK_ELEMENTS = 2**25


def _operand_dtypes(device: torch.device, weight: Tensor) -> tuple[torch.dtype, torch.dtype]:
    """(the precision operands are rounded to, the dtype the products run in)."""
    dtype = weight.dtype
    if torch.is_autocast_enabled(device.type):
        dtype = torch.get_autocast_dtype(device.type)
    if bf16_via_fp32(device.type, dtype):
        return dtype, torch.float32  # bf16-rounded operands, fp32 arithmetic (see kernels/bf16.py)
    return dtype, dtype


class _LinearCrossEntropy(torch.autograd.Function):
    """loss_sum, n_correct = CE(hidden @ weight.T, targets), ignore_index -100, summed.

    n_correct is counted only without gradients (validation); training steps return 0.
    """

    @staticmethod
    def forward(
        ctx, hidden: Tensor, weight: Tensor, targets: Tensor, grad_enabled: bool
    ) -> tuple[Tensor, Tensor]:
        rounding, dtype = _operand_dtypes(hidden.device, weight)
        # needs_input_grad follows requires_grad even under no_grad (validation), and grad
        # mode is always off in here: the caller says whether a backward can come
        needs_grad = grad_enabled and (ctx.needs_input_grad[0] or ctx.needs_input_grad[1])
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(rounding).to(dtype)
            n, v = hidden.shape[0], weight.shape[0]
            rows = max(1, min(n, CHUNK_ELEMENTS // v))
            buf = torch.empty(rows, v, dtype=torch.float32, device=hidden.device)
            logp_buf = torch.empty_like(buf)
            loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
            correct = torch.zeros((), dtype=torch.long, device=hidden.device)
            grad_h = torch.empty_like(hidden) if needs_grad else None
            fp32 = dtype == torch.float32  # else the weight gradient starts as chunk 1's
            grad_w = torch.zeros_like(weight, dtype=torch.float32) if needs_grad and fp32 else None
            g_buf = torch.empty_like(buf, dtype=dtype) if needs_grad and not fp32 else None
            # packed LM rows: every position has a target. Asked once per call, not per chunk
            # (on a GPU each answer is a host sync)
            all_valid = bool((targets != -100).all())
            for start in range(0, n, rows):
                h = hidden[start : start + rows].to(rounding).to(dtype)
                t = targets[start : start + rows]
                logits = buf[: h.shape[0]]
                if dtype == torch.float32:
                    torch.mm(h, w.t(), out=logits)
                else:
                    logits.copy_(h @ w.t())
                valid = None if all_valid else t != -100
                safe_t = t if all_valid else torch.where(valid, t, 0)
                # one log-softmax pass (max, sum of exp, write) instead of logsumexp's
                # temporaries plus a second subtract-and-exp for the gradient
                logp = torch.log_softmax(logits, dim=1, out=logp_buf[: h.shape[0]])
                picked = logp.gather(1, safe_t[:, None]).squeeze(1)
                loss -= picked.sum() if all_valid else torch.where(valid, picked, 0.0).sum()
                if not needs_grad:  # accuracy is a validation metric: no argmax while training
                    hits = logits.argmax(dim=1) == t
                    correct += (hits if all_valid else hits & valid).sum()
                    continue
                g = _logit_gradient(logp, picked, safe_t, valid, g_buf)
                grad_w = _backpropagate(g, h, w, grad_h[start : start + rows], grad_w)
            if needs_grad and grad_w is None:  # no rows at all
                grad_w = torch.zeros_like(weight, dtype=torch.float32)
        # intermediates, not inputs or outputs: kept on ctx, scaled in place by backward
        ctx.grads = (grad_h, grad_w)
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_correct: Tensor):
        grad_h, grad_w = ctx.grads
        ctx.grads = None  # the graph is not kept (scaling in place forbids a second backward)
        grad_hidden = grad_h.mul_(grad_loss) if ctx.needs_input_grad[0] else None
        grad_weight = grad_w.mul_(grad_loss) if ctx.needs_input_grad[1] else None
        return grad_hidden, grad_weight, None, None


def _logit_gradient(
    logp: Tensor, picked: Tensor, targets: Tensor, valid: Tensor | None, g_buf: Tensor | None
) -> Tensor:
    """d(sum of losses)/d(logits) of a chunk = softmax - one-hot, zero on ignored rows: in
    place of the fp32 `logp`, or (bf16 products) written straight into `g_buf`, one pass
    instead of an fp32 exp and a bf16 copy, the targets' entries as fp32 softmax - 1 rounded."""
    at = (torch.arange(len(targets), device=targets.device), targets)
    if g_buf is None:
        g = logp.exp_()
        g[at] -= 1.0
    else:
        g = torch.exp(logp, out=g_buf[: logp.shape[0]])
        g[at] = (picked.exp() - 1.0).to(g.dtype)
    return g if valid is None else g.mul_(valid[:, None])


def _backpropagate(
    g: Tensor, h: Tensor, w: Tensor, grad_h: Tensor, grad_w: Tensor | None
) -> Tensor:
    """Write the chunk's hidden-state gradient into `grad_h` and add its weight gradient to
    `grad_w`, which it returns: fp32 in place (addmm_); bf16 products make a bf16 [V, D], the
    first chunk's becoming the fp32 gradient (None before it) and later ones added to it."""
    if g.dtype == torch.float32:
        torch.mm(g, w, out=grad_h)
        return grad_w.addmm_(g.t(), h)
    grad_h.copy_(g @ w)
    part = g.t() @ h
    return part.float() if grad_w is None else grad_w.add_(part)


def linear_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Summed cross-entropy of `hidden` [N, D] projected by `weight` [V, D] (no bias) against
    `targets` [N] (-100 = ignored), and how many argmax predictions were right (counted only
    without gradients, i.e. in validation)."""
    return _LinearCrossEntropy.apply(hidden, weight, targets, torch.is_grad_enabled())
