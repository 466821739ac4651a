"""The chunked projection + cross-entropy equals logits -> F.cross_entropy, values and grads."""

from __future__ import annotations

import pytest
import torch

from llmtune.kernels.bf16 import native_bf16_matmul
from llmtune.objectives import chunked_ce
from llmtune.objectives.chunked_ce import linear_cross_entropy


def _reference(hidden, weight, targets):
    logits = hidden @ weight.T
    loss = torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")
    correct = ((logits.argmax(-1) == targets) & (targets != -100)).sum()
    return loss, correct


@pytest.mark.parametrize("ignored", [[3, 10], []])  # [] = every row has a target (packed LM)
@pytest.mark.parametrize("chunk_rows", [1, 5, 64])
def test_matches_full_logits(monkeypatch, chunk_rows, ignored):
    monkeypatch.setattr(chunked_ce, "CHUNK_ELEMENTS", 97 * chunk_rows)
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(23, 16, generator=gen, requires_grad=True)
    w = torch.randn(97, 16, generator=gen, requires_grad=True)
    t = torch.randint(97, (23,), generator=gen)
    t[ignored] = -100
    t[4] = int((h[4] @ w.T).argmax())  # at least one right answer
    loss, correct = linear_cross_entropy(h, w, t)
    assert correct.item() == 0  # training steps skip the argmax
    (loss / 7).backward()
    grads = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref_loss, ref_correct = _reference(h, w, t)
    (ref_loss / 7).backward()
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    torch.testing.assert_close(grads[0], h.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads[1], w.grad, rtol=1e-4, atol=1e-6)
    with torch.no_grad():  # validation: the loss again, and the right predictions counted
        val_loss, val_correct = linear_cross_entropy(h, w, t)
    assert val_loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    assert val_correct.item() == ref_correct.item() >= 1


def test_no_grad_and_autocast():
    h, w = torch.randn(9, 8), torch.randn(31, 8)
    t = torch.randint(31, (9,))
    with torch.no_grad():
        loss, _ = linear_cross_entropy(h, w, t)
    assert loss.item() == pytest.approx(_reference(h, w, t)[0].item(), rel=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half, _ = linear_cross_entropy(h, w, t)
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(loss.item(), rel=0.05)


@pytest.mark.gpu
def test_cuda_bf16_matches_reference():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    h = torch.randn(300, 64, device="cuda", requires_grad=True)
    w = torch.randn(5000, 64, device="cuda", requires_grad=True)
    t = torch.randint(5000, (300,), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, _ = linear_cross_entropy(h, w, t)
    loss.backward()
    ref, _ = _reference(h.detach(), w.detach(), t)
    assert loss.item() == pytest.approx(ref.item(), rel=0.02)
    assert w.grad.dtype == torch.float32


@pytest.mark.skipif(not native_bf16_matmul(), reason="needs a CPU with bf16 matmul units")
@pytest.mark.parametrize("ignored", [[3, 10], []])
def test_bf16_units_gradients_are_the_bf16_products_of_the_fp32_softmax(monkeypatch, ignored):
    """Under bf16 autocast on bf16 units: per chunk, the fp32 softmax of the bf16 logits
    minus one-hot (zero on ignored rows) rounded to bf16 once, multiplied in bf16; the
    weight gradient sums the chunks' bf16 products in fp32."""
    monkeypatch.setattr(chunked_ce, "CHUNK_ELEMENTS", 97 * 5)  # 5 chunks of 5 rows, one of 3
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(23, 16, generator=gen, requires_grad=True)
    w = torch.randn(97, 16, generator=gen, requires_grad=True)
    t = torch.randint(97, (23,), generator=gen)
    t[ignored] = -100
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = linear_cross_entropy(h, w, t)
    loss.backward()
    hb, wb = h.detach().bfloat16(), w.detach().bfloat16()
    valid = t != -100
    logp = (hb @ wb.T).float().log_softmax(-1)
    grad = logp.exp()
    grad[valid.nonzero().squeeze(1), t[valid]] -= 1.0
    g = (grad * valid[:, None]).bfloat16()
    ref_w = sum((g[i : i + 5].T @ hb[i : i + 5]).float() for i in range(0, 23, 5))
    assert loss.item() == pytest.approx(-logp[valid, t[valid]].sum().item(), rel=1e-6)
    assert torch.equal(h.grad, (g @ wb).float())
    torch.testing.assert_close(w.grad, ref_w, rtol=1e-6, atol=0)
