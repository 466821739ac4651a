"""`llmtune plan` and its memory estimates, checked against what the model really allocates."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from llmtune.cli import main
from llmtune.commands import plan
from llmtune.config.schema import HardwareConfig
from llmtune.models import build_model
from llmtune.models.gpt import GPTConfig
from llmtune.models.llama import LlamaConfig
from llmtune.models.registry import model_config
from llmtune.objectives.clm import CausalLM
from llmtune.train.hardware import Runtime, prepare_model
from llmtune.train.memory import (
    ActivationShape,
    activation_bytes,
    available_memory,
    head_activation_bytes,
    layer_activation_bytes,
)

TINY = ["model=gpt-tiny", "model.vocab_size=1000", "train.micro_batch_size=4", "hardware=cpu"]


def _number(text: str, label: str) -> int:
    return int(re.search(rf"{label}\s*│\s*([\d,]+)", text).group(1).replace(",", ""))


@pytest.mark.parametrize(
    ("model", "heads"), [("gpt-tiny", ("lm",)), ("bert-tiny", ("mlm",))], ids=["gpt", "bert"]
)
def test_plan_counts_the_parameters_build_model_makes(capsys, model, heads):
    main(["plan", f"model={model}", "model.vocab_size=1000", "hardware=cpu"])
    out = capsys.readouterr().out
    cfg = model_config(
        model.split("-")[0],
        vocab_size=1000,
        d_model=128,
        n_layers=2,
        n_heads=2,
        d_ff=512,
        n_positions=1024 if model.startswith("gpt") else 512,
    )
    built = build_model(cfg, heads)
    assert _number(out, "parameters") == built.num_parameters()
    assert _number(out, "without embeddings") == built.num_parameters(exclude_embeddings=True)
    assert "memory per device" in out and "step time" in out


def test_plan_warns_when_the_run_does_not_fit(capsys, monkeypatch):
    monkeypatch.setattr(plan, "available_memory", lambda device: 1024)
    main(["plan", *TINY])
    out = capsys.readouterr().out
    assert "warning" in out and "activation_checkpointing" in out


def test_plan_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["plan", *TINY])
    assert list(tmp_path.iterdir()) == []


def test_plan_leaves_the_loggers_of_the_process_enabled(capsys):
    """Silencing plan's own logging must not disable loggers that already exist: a later
    in-process command would lose its warnings from the run log (py.warnings) and its lines."""
    import logging

    existing = [logging.getLogger("py.warnings"), logging.getLogger("llmtune.data")]
    main(["plan", *TINY])
    assert [logger.disabled for logger in existing] == [False, False]


def _saved_bytes(model: torch.nn.Module, step) -> int:
    """Bytes autograd saves for backward (parameters excluded), each storage once."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


@pytest.mark.parametrize("family", ["gpt", "bert"])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("batch", [2, 4])
def test_activation_estimate_matches_saved_tensors(family, dropout, batch):
    cfg = model_config(
        family, vocab_size=500, d_model=64, n_layers=3, n_heads=4, d_ff=256,
        max_seq_len=64, dropout=dropout, attn_dropout=dropout,
    )  # fmt: skip
    # the model as training runs it: CPU kernels swapped in (their 1-byte dropout masks)
    heads = ("lm",) if family == "gpt" else ("mlm",)
    model = prepare_model(build_model(cfg, heads), HardwareConfig())
    ids = torch.randint(500, (batch, 64))
    measured = _saved_bytes(model, lambda: model.backbone(ids))
    shape = ActivationShape(batch=batch, seq_len=64, half=False, flash=dropout == 0)
    estimate = activation_bytes(cfg, shape)
    assert 0.9 < estimate / measured < 1.12


@pytest.mark.parametrize("kv_heads", [4, 2, 1])  # multi-head, grouped, multi-query
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_llama_activation_estimate_matches_saved_tensors(kv_heads, dropout):
    cfg = LlamaConfig(
        vocab_size=500, d_model=64, n_layers=3, n_heads=4, n_kv_heads=kv_heads, d_ff=160,
        max_seq_len=64, dropout=dropout, attn_dropout=dropout,
    )  # fmt: skip
    model = prepare_model(build_model(cfg, ("lm",)), HardwareConfig())  # as training runs it
    ids = torch.randint(500, (2, 64))
    measured = _saved_bytes(model, lambda: model.backbone(ids))
    shape = ActivationShape(batch=2, seq_len=64, half=False, flash=dropout == 0)
    assert 0.95 < activation_bytes(cfg, shape) / measured < 1.05


def test_llama_block_is_counted_by_hand_as_swiglu_with_grouped_keys_and_values():
    """d 64, 4 heads of 16 sharing 2 key/value heads, SwiGLU d_ff 160, fp32, fused attention,
    B*T = 128 tokens. Per token, in 4-byte floats:
      two RMSNorms: input and normalised output (fp32) and the scaled output a matmul reads,
        2 * 3 * 64 = 384
      attention: rotated q 64, rotated k 32 (SDPA reads the 2 key/value heads in place), the
        fused q|k|v output 64 + 32 + 32 that v views, output 64 = 288
      SwiGLU: gate|up 2 * 160, silu(gate) 160, silu(gate) * up 160 = 640
    GPT's GELU block of the same widths would count 2*64 + 6*64 + 2*160 = 832, not 1312."""
    cfg = LlamaConfig(vocab_size=500, d_model=64, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=160)
    shape = ActivationShape(batch=2, seq_len=64, half=False, flash=True)
    assert layer_activation_bytes(cfg, shape) == 128 * (384 + 288 + 640) * 4


def test_fused_head_estimate_is_far_below_full_logits():
    cfg = GPTConfig(vocab_size=50257, d_model=512, n_layers=1, n_heads=8)
    shape = ActivationShape(batch=8, seq_len=256, half=False, flash=True, lm_rows_share=255 / 256)
    full = ActivationShape(**{**vars(shape), "fused_lm_loss": False})
    assert head_activation_bytes(cfg, shape) < head_activation_bytes(cfg, full) / 3


def test_estimates_grow_with_batch_and_shrink_with_checkpointing():
    cfg = GPTConfig(vocab_size=1000, d_model=128, n_layers=4, n_heads=4)
    sizes = [
        activation_bytes(cfg, ActivationShape(batch=b, seq_len=128, half=False, flash=False))
        for b in (1, 2, 4, 8)
    ]
    assert sizes == sorted(sizes) and sizes[-1] > 6 * sizes[0]
    full = ActivationShape(batch=8, seq_len=128, half=False, flash=False)
    ckpt = ActivationShape(batch=8, seq_len=128, half=False, flash=False, checkpointing=True)
    assert activation_bytes(cfg, ckpt) < activation_bytes(cfg, full) / 2
    # with SDPA's fused kernel (no [B, H, T, T] weights kept) bf16 halves the matmul operands
    flash = ActivationShape(batch=8, seq_len=128, half=False, flash=True)
    half = ActivationShape(batch=8, seq_len=128, half=True, flash=True)
    assert activation_bytes(cfg, half) < activation_bytes(cfg, flash)


def test_available_memory_is_known_on_linux():
    free = available_memory(torch.device("cpu"))
    assert free is None or free > 0


def test_activation_checkpointing_gives_the_same_gradients():
    cfg = GPTConfig(vocab_size=300, d_model=32, n_layers=2, n_heads=2, d_ff=64)
    ids = {"input_ids": torch.randint(300, (2, 16))}
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = build_model(cfg, ("lm",))
        model.eval()  # no dropout: both runs draw nothing random
        prepare_model(model, HardwareConfig(activation_checkpointing=checkpointing))
        CausalLM(eos_id=0).losses(model, ids)["clm"].loss_sum.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        keys = set(model.state_dict())
        assert not any("checkpoint" in k or "_orig_mod" in k for k in keys)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.slow
@pytest.mark.parametrize(
    "precision, checkpointing", [("fp32", False), ("fp32", True), ("bf16", False)]
)
def test_compile_trains_and_evaluates_a_tiny_model_on_cpu(precision, checkpointing):
    cfg = GPTConfig(vocab_size=300, d_model=32, n_layers=1, n_heads=2, d_ff=64)
    hardware = HardwareConfig(
        compile=True, activation_checkpointing=checkpointing, precision=precision
    )
    model = prepare_model(build_model(cfg, ("lm",)), hardware)
    runtime = Runtime(device=torch.device("cpu"), precision=precision, threads=1)
    ids = {"input_ids": torch.randint(300, (2, 16))}
    with runtime.autocast():
        loss = CausalLM(eos_id=0).losses(model, ids)["clm"].loss_sum
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad(), runtime.autocast():  # evaluation, as the loop runs it: a new graph
        assert torch.isfinite(CausalLM(eos_id=0).losses(model, ids)["clm"].loss_sum)
    assert all("_orig_mod" not in k for k in model.state_dict())


@pytest.mark.gpu
def test_plan_reads_free_gpu_memory(capsys):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    assert available_memory(torch.device("cuda")) > 0
    main(["plan", "model=gpt-tiny", "model.vocab_size=1000", "hardware.device=cuda"])
    assert "cuda bf16" in capsys.readouterr().out


def test_gpt2_small_is_gpt2s_124m_shape(capsys):
    """model=gpt2-small had the tokenizer's 8000 rows instead of GPT-2's 50257 (91,986,432)."""
    main(["plan", "model=gpt2-small", "train.micro_batch_size=1", "hardware=cpu"])
    assert _number(capsys.readouterr().out, "parameters") == 124_439_808


def test_plan_of_t5_small_counts_its_60m_parameters_and_both_stacks_flops(capsys):
    """t5-small is T5's published shape (60,506,624 parameters, as transformers counts it);
    FLOPs per token are one example's (512 sources, T5's 114 targets) over its sources, not
    the decoder-only count at every position."""
    from llmtune.data.span_corruption import span_corruption_lengths
    from llmtune.models.t5 import t5_training_flops
    from llmtune.train.flops import model_flops_per_token

    main(["plan", "model=t5-small", "hardware=cpu"])
    out = capsys.readouterr().out
    assert _number(out, "parameters") == 60_506_624
    cfg = model_config("t5", vocab_size=32128, d_model=512, n_layers=6, n_heads=8, d_kv=64)
    cfg = dataclasses.replace(cfg, d_ff=2048, max_seq_len=512, feed_forward="relu")
    _, targets = span_corruption_lengths(512)
    per_token = model_flops_per_token(cfg, 512, targets / 512)
    assert per_token == t5_training_flops(cfg, 512, 114) / 512
    assert f"{per_token / 1e6:,.1f} M" in out
