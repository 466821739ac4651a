"""bf16 products through fp32 arithmetic (kernels/bf16.py): bf16 numerics, bf16 memory."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from llmtune.cli import main
from llmtune.config.schema import HardwareConfig
from llmtune.kernels.bf16 import Bf16ViaFp32, native_bf16_matmul
from llmtune.models import build_model
from llmtune.models.gpt import GPTConfig
from llmtune.objectives.chunked_ce import linear_cross_entropy
from llmtune.train.hardware import Runtime, prepare_model
from llmtune.train.memory import ActivationShape, activation_bytes

BF16 = torch.bfloat16


def _bf16_autocast():
    return torch.autocast("cpu", dtype=BF16)


def _exact(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Float64 copies of bf16-rounded values: products of these are exact references."""
    return [t.detach().to(BF16).double() for t in tensors]


def _ulps_apart(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """How many bf16 steps separate a and b (both bf16, same sign region)."""
    return (a.view(torch.int16).int() - b.view(torch.int16).int()).abs()


def test_linear_is_the_bf16_rounded_exact_product_forward_and_backward():
    torch.manual_seed(0)
    x = torch.randn(4, 32, 64, requires_grad=True)
    linear = torch.nn.Linear(64, 48)
    with _bf16_autocast(), Bf16ViaFp32():
        y = linear(x)
    assert y.dtype == BF16  # the dtype autocast gives, so downstream code sees no difference
    xr, wr, br = _exact(x, linear.weight, linear.bias)
    ref = (xr @ wr.T + br).to(BF16)
    # fp32 accumulation of exact products: at most one bf16 step from the exact sum
    assert _ulps_apart(y, ref).max() <= 1
    g = torch.randn_like(y)
    y.backward(g)
    gr = g.double()
    assert x.grad.dtype == torch.float32 and linear.weight.grad.dtype == torch.float32
    assert _ulps_apart(x.grad.to(BF16), (gr @ wr).to(BF16)).max() <= 1
    ref_w = (gr.flatten(0, 1).T @ xr.flatten(0, 1)).to(BF16)
    assert _ulps_apart(linear.weight.grad.to(BF16), ref_w).max() <= 1
    assert _ulps_apart(linear.bias.grad.to(BF16), gr.sum((0, 1)).to(BF16)).max() <= 1


def test_linear_saves_its_operands_in_bf16():
    x = torch.randn(8, 64, requires_grad=True)
    linear = torch.nn.Linear(64, 64)
    saved = []
    hooks = torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t)
    with _bf16_autocast(), Bf16ViaFp32(), hooks:
        linear(x)
    assert saved and all(t.dtype == BF16 for t in saved)


def test_matches_torchs_own_bf16_autocast_on_a_model():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=300, d_model=64, n_layers=2, n_heads=4, d_ff=128,
                      max_seq_len=32, dropout=0.0, attn_dropout=0.0)  # fmt: skip
    model = build_model(cfg, ("lm",))
    ids = torch.randint(300, (2, 32))

    def loss_and_grads(products):
        model.zero_grad()
        with _bf16_autocast(), products:
            hidden = model(ids)
            loss, _ = linear_cross_entropy(hidden[:, :-1].flatten(0, 1), model.heads["lm"].weight,
                                           ids[:, 1:].flatten())  # fmt: skip
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])

    native_loss, native_grads = loss_and_grads(contextlib.nullcontext())
    ours_loss, ours_grads = loss_and_grads(Bf16ViaFp32())
    assert ours_loss == pytest.approx(native_loss, rel=2e-3)
    cosine = F.cosine_similarity(ours_grads, native_grads, dim=0).item()
    assert cosine > 0.999


def test_attention_and_matmul_round_operands_and_return_bf16():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 16, 8) for _ in range(3))
    with _bf16_autocast(), Bf16ViaFp32():
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        scores = q @ k.transpose(-1, -2)
    assert y.dtype == scores.dtype == BF16
    qr, kr, vr = _exact(q, k, v)
    ref = F.scaled_dot_product_attention(qr, kr, vr, is_causal=True).to(BF16)
    assert _ulps_apart(y, ref).max() <= 1
    assert _ulps_apart(scores, (qr @ kr.transpose(-1, -2)).to(BF16)).max() <= 1


def test_other_precisions_pass_through_untouched():
    a, b = torch.randn(16, 16), torch.randn(16, 16)
    with Bf16ViaFp32():  # no autocast, fp32 operands: plain fp32 matmul
        assert torch.equal(a @ b, torch.mm(a, b)) and (a @ b).dtype == torch.float32
    with _bf16_autocast(), Bf16ViaFp32():  # autocast leaves fp64 alone, and so do we
        assert (a.double() @ b.double()).dtype == torch.float64


NO_BF16_UNITS = pytest.mark.skipif(
    native_bf16_matmul(),
    reason="assumes a CPU without bf16 units (products through fp32); this one has them",
)
BF16_UNITS = pytest.mark.skipif(
    not native_bf16_matmul(), reason="needs a CPU with bf16 units (AVX512-BF16 or AMX)"
)


def _head_loss_and_references() -> tuple[float, dict[str, float]]:
    """The chunked head's loss under bf16 autocast, and float64 references: operands rounded
    to bf16 (exact products), those products rounded to bf16 too, and nothing rounded."""
    torch.manual_seed(0)
    h, w = torch.randn(40, 16), torch.randn(50, 16)
    t = torch.randint(50, (40,))
    with _bf16_autocast():
        loss, _ = linear_cross_entropy(h, w, t)
    hr, wr = _exact(h, w)
    references = {
        "operands": F.cross_entropy(hr @ wr.T, t, reduction="sum").item(),
        "operands_and_logits": F.cross_entropy(
            (hr @ wr.T).to(BF16).double(), t, reduction="sum"
        ).item(),
        "none": F.cross_entropy(h.double() @ w.double().T, t, reduction="sum").item(),
    }
    # the references differ enough to tell which arithmetic ran
    assert abs(references["operands"] - references["none"]) > 1e-4
    assert abs(references["operands"] - references["operands_and_logits"]) > 1e-4
    return loss.item(), references


@NO_BF16_UNITS
def test_cross_entropy_head_rounds_its_operands_to_bf16():
    # without bf16 units the products run in fp32 on bf16-rounded operands; logits stay fp32
    loss, references = _head_loss_and_references()
    assert loss == pytest.approx(references["operands"], rel=1e-5)


@BF16_UNITS
def test_cross_entropy_head_on_bf16_units_rounds_operands_and_logits():
    # bf16 units multiply bf16 operands exactly, accumulate in fp32 and return bf16 logits
    loss, references = _head_loss_and_references()
    assert loss == pytest.approx(references["operands_and_logits"], rel=1e-5)


def _plain_and_checkpointed_grads(products) -> list[torch.Tensor]:
    """Gradients of one GPT without and with activation checkpointing, the forward run in
    bf16 autocast inside `products` (a context) and the backward outside it."""
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=300, d_model=64, n_layers=2, n_heads=4, d_ff=128,
                      max_seq_len=32, dropout=0.1, attn_dropout=0.1)  # fmt: skip
    plain = build_model(cfg, ("lm",))
    ckpt = build_model(cfg, ("lm",))
    ckpt.load_state_dict(plain.state_dict())
    prepare_model(plain, HardwareConfig())  # both with the CPU kernels, as training runs
    prepare_model(ckpt, HardwareConfig(activation_checkpointing=True))
    ids = torch.randint(300, (2, 32))
    grads = []
    for model in (plain, ckpt):
        torch.manual_seed(1)  # the same dropout masks in both runs
        with products():
            loss = model(ids).float().square().mean()
        loss.backward()  # outside the context, as the training loop does
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    return grads


@NO_BF16_UNITS
def test_activation_checkpointing_recomputes_with_the_same_products():
    # forced fp32 products: what training runs on a CPU without bf16 units, so there the
    # recomputation must restore them (a recomputation with torch's bf16 kernels instead
    # would differ in the last bits); on a CPU with the units training never enters the mode
    grads = _plain_and_checkpointed_grads(_Both)
    assert torch.equal(grads[0], grads[1])


def test_activation_checkpointing_in_bf16_training_recomputes_exactly():
    # the products training really runs on this CPU (fp32 products without bf16 units,
    # the native bf16 kernels with them): the recomputed forward is the same forward
    runtime = Runtime(torch.device("cpu"), "bf16", threads=torch.get_num_threads())
    grads = _plain_and_checkpointed_grads(runtime.autocast)
    assert torch.equal(grads[0], grads[1])


class _Both(contextlib.ExitStack):
    """bf16 autocast with Bf16ViaFp32 forced on, whatever the CPU."""

    def __enter__(self):
        super().__enter__()
        self.enter_context(_bf16_autocast())
        self.enter_context(Bf16ViaFp32())
        return self


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_memory_estimate_of_bf16_through_fp32(dropout):
    cfg = GPTConfig(vocab_size=500, d_model=64, n_layers=3, n_heads=4, d_ff=256,
                      max_seq_len=64, dropout=dropout, attn_dropout=dropout)  # fmt: skip
    model = build_model(cfg, ("lm",))
    ids = torch.randint(500, (4, 64))
    # parameters and their bf16 copies are weights to the plan, not activations
    weight_shapes = {tuple(p.shape) for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if tuple(t.shape) not in weight_shapes:
            ptr = t.untyped_storage().data_ptr()
            seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
        return t

    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    with hooks, _bf16_autocast(), Bf16ViaFp32():
        model.backbone(ids)
    shape = ActivationShape(batch=4, seq_len=64, half=True, half_via_fp32=True, flash=dropout == 0)
    assert 0.9 < activation_bytes(cfg, shape) / sum(seen.values()) < 1.12


@pytest.mark.skipif(not native_bf16_matmul(), reason="needs a CPU with bf16 matmul units")
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_memory_estimate_of_native_bf16(dropout):
    """bf16 autocast on bf16 units, the kernels swapped in as training runs: with attention
    dropout the [B,H,T,T] weights stay as bf16 softmax plus a 1-byte keep mask."""
    cfg = GPTConfig(vocab_size=500, d_model=64, n_layers=3, n_heads=4, d_ff=256,
                      max_seq_len=64, dropout=dropout, attn_dropout=dropout)  # fmt: skip
    model = prepare_model(build_model(cfg, ("lm",)), HardwareConfig(precision="bf16"))
    ids = torch.randint(500, (5, 64))  # 320 tokens: no activation has a weight's shape
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    # the bf16 casts of weights (and their transposes) are weights to the plan
    weight_shapes = {s for p in model.parameters() for s in (tuple(p.shape), tuple(p.shape)[::-1])}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params and tuple(t.shape) not in weight_shapes:
            seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _bf16_autocast():
        model.backbone(ids)
    shape = ActivationShape(batch=5, seq_len=64, half=True, flash=dropout == 0)
    assert 0.9 < activation_bytes(cfg, shape) / sum(seen.values()) < 1.12


def test_plan_says_what_bf16_buys_on_this_cpu(capsys):
    main(["plan", "model=gpt-tiny", "model.vocab_size=1000", "hardware=cpu",
          "hardware.precision=bf16"])  # fmt: skip
    out = capsys.readouterr().out
    assert "cpu bf16" in out
    assert ("no bf16 matmul units" in out) == (not native_bf16_matmul())
    assert ("multiplies bf16 on its" in out) == native_bf16_matmul()


def test_plan_names_the_bf16_units(monkeypatch, capsys):
    from llmtune.commands import plan

    monkeypatch.setattr(plan, "bf16_via_fp32", lambda device, dtype: False)
    monkeypatch.setattr(plan, "bf16_units", lambda: "AMX")
    main(["plan", "model=gpt-tiny", "model.vocab_size=1000", "hardware=cpu",
          "hardware.precision=bf16"])  # fmt: skip
    assert "this CPU multiplies bf16 on its AMX units" in capsys.readouterr().out


@NO_BF16_UNITS
def test_compiled_checkpointing_in_bf16_is_refused_in_one_line(capsys, tmp_path):
    # torch.compile cannot give the recomputation the fp32 products the forward used
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", f"hydra.run.dir={tmp_path}", "model=gpt-tiny", "hardware=cpu",
              "hardware.precision=bf16", "hardware.compile=true",
              "hardware.activation_checkpointing=true"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert len(err.splitlines()) == 1 and "hardware.activation_checkpointing=true" in err
    assert not (tmp_path / "checkpoints").exists()


def test_attention_dropout_without_bf16_units_stays_in_fp32_arithmetic(monkeypatch):
    """On a CPU without bf16 units, attention with dropout under bf16 autocast is the fp32
    cheap-mask path on bf16-rounded operands (fp32 softmax), not bf16 arithmetic."""
    from llmtune.kernels import dropout

    monkeypatch.setattr(dropout, "native_bf16_matmul", lambda: False)
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 8, 16) for _ in range(3))
    k, v = k[:, :2], v[:, :2]  # grouped: 2 key/value heads for 4 query heads
    with _bf16_autocast(), Bf16ViaFp32():
        torch.manual_seed(3)
        ours = dropout.cpu_sdpa(q, k, v, None, True, 0.25)
    rounded = [t.to(BF16).float() for t in (q, dropout.repeat_kv(k, 2), dropout.repeat_kv(v, 2))]
    torch.manual_seed(3)
    expected = dropout.attention_with_dropout(*rounded, None, True, 0.25).to(BF16)
    assert ours.dtype == BF16 and torch.equal(ours, expected)
