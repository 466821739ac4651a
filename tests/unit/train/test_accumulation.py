"""1 x B and 2 x B/2 gradient accumulation give the same gradients, for every objective."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from llmtune.config.schema import (
    HardwareConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
)
from llmtune.data import TokenizerInfo
from llmtune.models import build_model
from llmtune.models.registry import model_config
from llmtune.objectives import build_objective, entry
from llmtune.train.hardware import resolve_runtime
from llmtune.train.loop import Trainer, TrainSetup

BERT_INFO = TokenizerInfo(
    vocab_size=50,
    pad_id=0,
    unk_id=1,
    special_ids=(0, 1, 2, 3, 4),
    cls_id=2,
    sep_id=3,
    mask_id=4,
    eos_id=None,
)
GPT_INFO = TokenizerInfo(
    vocab_size=50,
    pad_id=0,
    unk_id=None,
    special_ids=(0,),
    cls_id=None,
    sep_id=None,
    mask_id=None,
    eos_id=0,
)


def examples(family: str, n: int = 8, seq: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 50, (n, seq), generator=g)
    if family == "gpt":
        return {"input_ids": ids, "doc_ids": (torch.arange(seq) >= seq // 2).int().expand(n, seq)}
    mask = torch.ones(n, seq, dtype=torch.long)
    mask[:, -3:] = 0  # some padding, so masked counts differ between rows
    ids[:, 0], ids[:, seq // 2] = 2, 3
    return {
        "input_ids": ids * mask,
        "token_type_ids": (torch.arange(seq) > seq // 2).long().expand(n, seq) * mask,
        "attention_mask": mask,
        "nsp_labels": torch.randint(0, 2, (n,), generator=g),
    }


def tiny_model(family: str = "bert", **changes) -> ModelConfig:
    """A model config small enough for unit tests on CPU, without dropout (gradients compare)."""
    config = model_config(
        family,
        vocab_size=50,
        d_model=32,
        n_layers=2,
        n_heads=2,
        d_ff=64,
        max_seq_len=16,
        n_positions=32,
        dropout=0.0,
        attn_dropout=0.0,
        layer_norm_eps=1e-12,
    )
    return dataclasses.replace(config, **changes)


def cpu_trainer(config: RunConfig, objective, data, tmp_path: Path, n_labels: int = 0) -> Trainer:
    """A Trainer of a fresh seed-0 model on `data` (its train and validation examples)."""
    torch.manual_seed(0)
    model = build_model(config.model, objective.heads, n_labels)
    runtime = resolve_runtime(config.hardware)
    return Trainer(
        TrainSetup(config, model, objective, data, data, "{}", tmp_path, runtime, tmp_path)
    )


def trainer(family: str, objective_name: str, tmp_path: Path) -> Trainer:
    config = RunConfig(
        model=tiny_model(family),
        objective=entry(objective_name).config(),
        train=TrainConfig(global_batch_size=8, micro_batch_size=8),
        hardware=HardwareConfig(device="cpu", precision="fp32"),
    )
    info = GPT_INFO if family == "gpt" else BERT_INFO
    return cpu_trainer(config, build_objective(config.objective, info), examples(family), tmp_path)


def grads(t: Trainer, micro_batches) -> list[torch.Tensor]:
    t.model.zero_grad(set_to_none=True)
    t.accumulate_gradients(micro_batches)
    return [p.grad.clone() for p in t.model.parameters() if p.grad is not None]


@pytest.mark.parametrize(
    ("family", "objective"), [("gpt", "clm"), ("bert", "mlm"), ("bert", "mlm_nsp")]
)
def test_one_big_batch_equals_two_half_batches(tmp_path, family, objective):
    t = trainer(family, objective, tmp_path)
    batch = t.s.objective.prepare(examples(family), torch.Generator().manual_seed(1))
    halves = [{k: v[:4] for k, v in batch.items()}, {k: v[4:] for k, v in batch.items()}]
    whole, split = grads(t, [batch]), grads(t, halves)
    assert len(whole) == len(split) > 0
    for a, b in zip(whole, split):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    # A per-micro-batch mean would weight the halves wrongly whenever counts differ:
    counts = [t.s.objective.count(h)[t.s.objective.lm_term] for h in halves]
    if family == "bert":
        assert counts[0] != counts[1]
