"""The cheap CPU dropout mask, residual dropout, and attention with dropout against SDPA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmtune.kernels.dropout import CpuDropout, attention_with_dropout, cpu_sdpa, keep_mask


def test_keep_mask_drops_p_in_every_16_bit_lane():
    torch.manual_seed(0)
    keep, scale = keep_mask((1 << 20,), 0.1)
    assert keep.dtype == torch.bool
    # each 64-bit word feeds four consecutive elements; a biased lane shows up here
    for lane in range(4):
        assert abs(1 - keep[lane::4].float().mean().item() - 0.1) < 0.004
    assert scale == pytest.approx(1 / (1 - 6554 / 65536))


def test_keep_mask_follows_the_torch_seed():
    torch.manual_seed(3)
    a, _ = keep_mask((5, 7), 0.5)
    torch.manual_seed(3)
    b, _ = keep_mask((5, 7), 0.5)
    assert a.shape == (5, 7) and torch.equal(a, b)


def test_dropout_zeroes_and_rescales_in_training_and_is_identity_in_eval():
    drop = CpuDropout(0.25)
    x = torch.randn(64, 512, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.02
    assert torch.allclose(y[kept], x[kept] / 0.75)
    y.sum().backward()
    assert torch.allclose(x.grad, kept.float() / 0.75)
    assert torch.equal(drop.eval()(x), x)


def _inputs(t: int = 6, s: int = 6) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(1)
    shapes = [(2, 3, t, 4), (2, 3, s, 4), (2, 3, s, 4)]
    return tuple(torch.randn(*sh, dtype=torch.float64, requires_grad=True) for sh in shapes)


@pytest.mark.parametrize("kind", ["causal", "padding", "prefix"])
def test_attention_with_no_dropout_matches_sdpa(kind):
    s = 9 if kind == "prefix" else 6
    q, k, v = _inputs(6, s)
    mask, is_causal = None, kind == "causal"
    if kind == "padding":
        mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
        mask = mask[:, None, None, :]
    if kind == "prefix":
        mask = torch.ones(6, 9, dtype=torch.bool).tril(3)
    ours = attention_with_dropout(q, k, v, mask, is_causal, 0.0)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
    assert torch.allclose(ours, ref, atol=1e-12)
    ours.square().sum().backward()
    grads = [x.grad.clone() for x in (q, k, v)]
    for x in (q, k, v):
        x.grad = None
    ref.square().sum().backward()
    for mine, theirs in zip(grads, (q.grad, k.grad, v.grad), strict=True):
        assert torch.allclose(mine, theirs, atol=1e-12)


def test_attention_with_dropout_forward_and_gradients():
    q, k, v = _inputs()

    def attend(q, k, v):
        torch.manual_seed(7)  # the same keep mask on every call, so gradcheck sees one function
        return attention_with_dropout(q, k, v, None, True, 0.5)

    torch.manual_seed(7)
    keep, scale = keep_mask((2, 3, 6, 6), 0.5)
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    scores = (q @ k.transpose(-1, -2) / 2).masked_fill(~causal, float("-inf"))
    expected = (scores.softmax(-1) * keep * scale) @ v
    assert torch.allclose(attend(q, k, v), expected, atol=1e-12)
    assert torch.autograd.gradcheck(attend, (q, k, v))


def test_attention_with_dropout_takes_a_float_bias_and_a_scale():
    """T5's path: an additive position bias [1,H,T,S] (learned, so it needs a gradient, summed
    over the batch it was broadcast along) and no 1/sqrt(Dh) scaling."""
    q, k, v = _inputs()
    torch.manual_seed(2)
    bias = torch.randn(1, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    ours = attention_with_dropout(q, k, v, bias, False, 0.0, scale=1.0)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
    assert torch.allclose(ours, ref, atol=1e-12)

    def attend(q, k, v, bias):
        torch.manual_seed(7)  # one keep mask for every call
        return attention_with_dropout(q, k, v, bias, False, 0.5, scale=1.0)

    assert torch.autograd.gradcheck(attend, (q, k, v, bias))


def test_attention_with_dropout_under_bf16_autocast_takes_the_cheap_mask_in_bf16():
    """CPU bf16 autocast (a CPU with bf16 units trains so): the weights are dropped by
    `keep_mask`, not by SDPA's unfused path, and the products run in bf16."""
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 3, 8, 16, requires_grad=True) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(5)
        ours = cpu_sdpa(q, k, v, None, True, 0.25)
    assert ours.dtype == torch.bfloat16
    torch.manual_seed(5)
    keep, scale = keep_mask((2, 3, 8, 8), 0.25)
    qb, kb, vb = (x.detach().bfloat16() for x in (q, k, v))
    causal = torch.ones(8, 8, dtype=torch.bool).tril()
    scores = ((qb * 0.25) @ kb.transpose(-1, -2)).masked_fill(~causal, float("-inf"))
    expected = (torch.where(keep, scores.softmax(-1), 0.0) @ vb) * scale
    torch.testing.assert_close(ours, expected, atol=2e-2, rtol=2e-2)
    ours.float().square().sum().backward()
    assert all(x.grad is not None and torch.isfinite(x.grad).all() for x in (q, k, v))


@pytest.mark.gpu
def test_cuda_bf16_attention_with_dropout_stays_with_sdpa():
    """On a GPU the CPU mask is never taken: SDPA's own (fused) dropout runs, in bf16."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    q, k, v = (torch.randn(2, 3, 8, 16, device="cuda", requires_grad=True) for _ in range(3))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        torch.manual_seed(5)
        ours = cpu_sdpa(q, k, v, None, True, 0.25)
        torch.manual_seed(5)
        ref = F.scaled_dot_product_attention(q, k, v, dropout_p=0.25, is_causal=True)
    assert ours.dtype == torch.bfloat16 and torch.equal(ours, ref)
    ours.float().sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v))
