"""Model FLOPs follow DESIGN.md's convention; the loop reports them; the CPU peak is cached."""

from __future__ import annotations

import json
import time

import pytest
import torch

from llmtune.adapters.freeze import FreezeConfig
from llmtune.adapters.lora import LoraConfig
from llmtune.adapters.method import apply_method
from llmtune.config.schema import MethodConfig, ModelConfig
from llmtune.models import build_model
from llmtune.models.bert import BertConfig
from llmtune.models.gpt import GPTConfig
from llmtune.models.llama import LlamaConfig
from llmtune.models.registry import model_config
from llmtune.train import flops
from llmtune.train.flops import (
    body_flops_per_position,
    device_peak_flops,
    head_flops_per_target,
    model_flops_per_token,
    trained_body_flops,
)
from tests.e2e.helpers import TINY_BERT, TINY_GPT, TINY_LLAMA, metrics, pretrain

GPT = GPTConfig(vocab_size=1000, d_model=64, n_layers=3, n_heads=4, d_ff=256)
BERT = BertConfig(vocab_size=1000, d_model=64, n_layers=2, n_heads=4, d_ff=128)


def _block_matmul_params(cfg: ModelConfig) -> int:
    model = build_model(cfg, ("lm",) if cfg.family == "gpt" else ("mlm",))
    return sum(
        m.weight.numel() for m in model.backbone.blocks.modules() if isinstance(m, torch.nn.Linear)
    )


@pytest.mark.parametrize("cfg", [GPT, BERT], ids=["gpt", "bert"])
def test_body_flops_are_6n_plus_attention(cfg):
    seq_len = 32
    expected = 6 * _block_matmul_params(cfg) + 12 * cfg.n_layers * seq_len * cfg.d_model
    assert body_flops_per_position(cfg, seq_len) == expected


def test_llama_flops_count_grouped_query_attention_and_swiglu_by_hand():
    """SmolLM2-135M: q and o are d x (9 x 64), k and v d x (3 x 64) each (GQA), the MLP three
    d x 1536 matrices (gate, up, down); 30 layers of that are 106,168,320 weights."""
    cfg = LlamaConfig(
        vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, d_ff=1536,
        max_seq_len=2048, n_positions=8192, tie_embeddings=True,
    )  # fmt: skip
    per_layer = 576 * 576 + 2 * 576 * 192 + 576 * 576 + 3 * 576 * 1536
    assert 30 * per_layer == 106_168_320
    attention = 12 * 30 * 2048 * 576
    assert body_flops_per_position(cfg, 2048) == 6 * 30 * per_layer + attention
    assert head_flops_per_target(cfg) == 6 * 49152 * 576
    # a head width apart from d_model: the attention term follows n_heads x head_dim
    wide = LlamaConfig(vocab_size=64, d_model=32, n_heads=4, n_kv_heads=1, head_dim=16, d_ff=48)
    per_layer = 32 * 64 + 2 * 32 * 16 + 64 * 32 + 3 * 32 * 48
    assert body_flops_per_position(wide, 10) == 6 * 2 * per_layer + 12 * 2 * 10 * 64


def test_head_flops_count_the_projection_and_berts_transform():
    assert head_flops_per_target(GPT) == 6 * GPT.vocab_size * GPT.d_model
    assert head_flops_per_target(BERT) == 6 * (BERT.vocab_size * BERT.d_model + BERT.d_model**2)


def test_per_token_flops_count_the_head_only_where_it_runs():
    body = body_flops_per_position(BERT, 32)
    head = head_flops_per_target(BERT)
    assert model_flops_per_token(BERT, 32, 0.15) == pytest.approx(body + 0.15 * head)
    assert model_flops_per_token(BERT, 32, 0.0) == body


def test_cpu_peak_is_quick_and_positive():
    start = time.perf_counter()
    peak = flops._measure_cpu_peak(torch.float32, trials=2, min_seconds=0.01)
    assert peak > 1e8
    assert time.perf_counter() - start < 30


def test_cpu_peak_is_measured_once_and_cached(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(flops, "_measure_cpu_peak", lambda dtype: calls.append(dtype) or 5e10)
    cpu = torch.device("cpu")
    assert device_peak_flops(cpu, "fp32", tmp_path) == 5e10
    assert device_peak_flops(cpu, "fp32", tmp_path) == 5e10
    assert device_peak_flops(cpu, "bf16", tmp_path) == 5e10
    assert calls == [torch.float32, torch.bfloat16]
    assert len(json.loads((tmp_path / "cpu_peak_flops.json").read_text())) == 2


def test_cpu_peak_below_what_a_run_achieved_is_measured_again(tmp_path, monkeypatch):
    measured = iter([5e10, 1e9])
    monkeypatch.setattr(flops, "_measure_cpu_peak", lambda dtype: next(measured))
    cpu = torch.device("cpu")
    path = tmp_path / "cpu_peak_flops.json"
    path.write_text(json.dumps({flops.cpu_peak_key("fp32"): 2e9}))  # measured while busy
    assert device_peak_flops(cpu, "fp32", tmp_path, achieved=1e9) == 2e9  # plausible: kept
    assert device_peak_flops(cpu, "fp32", tmp_path, achieved=3e9) == 5e10
    assert json.loads(path.read_text()) == {flops.cpu_peak_key("fp32"): 5e10}
    # a second measurement lower than the cached peak never lowers it
    assert device_peak_flops(cpu, "fp32", tmp_path, achieved=6e10) == 5e10


def test_loop_remeasures_a_stale_cpu_peak(tmp_path, jsonl_corpus):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "cpu_peak_flops.json").write_text(json.dumps({flops.cpu_peak_key("fp32"): 1.0}))
    run = tmp_path / "run"
    pretrain(run, jsonl_corpus, *TINY_GPT, "train.max_steps=2", f"data.cache_dir={cache}")
    train, _ = metrics(run)
    # against the stale 1 FLOP/s the first MFU would be ~1e9; a measured peak puts it below 1
    assert all(0 < r["mfu"] < 1 for r in train)
    peak = json.loads((cache / "cpu_peak_flops.json").read_text())[flops.cpu_peak_key("fp32")]
    assert peak > 1e8


@pytest.mark.parametrize(
    ("family", "tiny"),
    [("gpt", TINY_GPT), ("bert", TINY_BERT), ("llama", TINY_LLAMA)],
    ids=["gpt", "bert", "llama"],
)
def test_loop_reports_consistent_throughput(tmp_path, jsonl_corpus, family, tiny):
    run = tmp_path / "run"
    pretrain(run, jsonl_corpus, *tiny, "train.max_steps=3", "train.eval_every=100")
    train, _ = metrics(run)
    assert [r["step"] for r in train] == [1, 2, 3]
    heads = {"n_heads": 4, "n_kv_heads": 2} if family == "llama" else {"n_heads": 2}
    cfg = model_config(family, vocab_size=400, d_model=64, n_layers=2, d_ff=128, **heads)
    body = body_flops_per_position(cfg, 32)
    for r in train:
        assert r["tokens_per_s"] > 0 and 0 <= r["data_wait_share"] < 1
        assert r["mfu"] == pytest.approx(r["tflops_per_s"] * 1e12 / _cached_peak(), rel=1e-6)
        flops_per_token = r["tflops_per_s"] * 1e12 / r["tokens_per_s"]
        if family != "bert":  # every position but the last has a target
            expected = body + 31 / 32 * head_flops_per_target(cfg)
            assert flops_per_token == pytest.approx(expected, rel=1e-6)
        else:  # ~15% of the real tokens are masked; padding still runs through the body
            assert body < flops_per_token < 2 * body + 0.5 * head_flops_per_target(cfg)


def _cached_peak() -> float:
    import os
    from pathlib import Path

    path = Path(os.environ["LLMTUNE_CACHE"]) / "cpu_peak_flops.json"
    values = json.loads(path.read_text())
    return float(values[flops.cpu_peak_key("fp32")])


@pytest.mark.gpu
def test_gpu_peak_comes_from_the_table(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    name = torch.cuda.get_device_name(0)
    peak = device_peak_flops(torch.device("cuda"), "bf16", tmp_path)
    known = any(fragment in name for fragment in flops.GPU_PEAKS)
    assert (peak is not None) == known


def _trained_flops(method: MethodConfig, seq_len: int) -> float:
    """Training FLOPs per position of BERT adapted by `method`."""
    model = build_model(BERT, ("mlm", "seq_cls"), n_labels=2)
    apply_method(model, method)
    return trained_body_flops(model).at(seq_len)


def test_trained_flops_count_only_the_backward_work_done():
    seq_len, n = 32, _block_matmul_params(BERT)
    attention = 4 * BERT.n_layers * seq_len * BERT.d_model  # the forward's share of 12 L T d
    full = _trained_flops(MethodConfig(), seq_len)
    assert full == body_flops_per_position(BERT, seq_len)  # full training: 6N + 12 L T d
    # everything below the heads frozen: the body runs its forward only
    head_only = _trained_flops(FreezeConfig(), seq_len)
    assert head_only == 2 * n + attention
    # the bottom block frozen: forward there; forward, backward and weight gradients above
    top = _trained_flops(FreezeConfig(freeze_layers=1), seq_len)
    assert top == (2 * n + attention) / 2 + (6 * n + 3 * attention) / 2
    # LoRA: gradients flow through every block, but only the small adapters get weight grads
    lora = _trained_flops(LoraConfig(dropout=0.0), seq_len)
    assert lora == pytest.approx(4 * n + 3 * attention, rel=0.05)
