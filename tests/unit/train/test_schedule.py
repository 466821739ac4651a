"""Warmup then cosine/linear/constant; no weight decay on biases, norms or embeddings."""

from __future__ import annotations

import math

import pytest
import torch

from llmtune.config.schema import OptimConfig
from llmtune.train.optim import build_optimizer, lr_at


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_warmup_then_schedule(schedule):
    cfg = OptimConfig(lr=1.0, warmup_steps=10, schedule=schedule, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg, max_steps=110) for s in range(110)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))
    if schedule == "constant":
        assert all(lr == 1.0 for lr in lrs[10:])
    else:
        assert lrs[10] == pytest.approx(1.0)
        assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
        assert lr_at(110, cfg, 110) == pytest.approx(0.1)
    if schedule == "cosine":
        assert lr_at(60, cfg, 110) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))


def test_no_decay_on_biases_norms_and_embeddings():
    model = torch.nn.Sequential(
        torch.nn.Embedding(10, 4), torch.nn.Linear(4, 4), torch.nn.LayerNorm(4)
    )
    opt = build_optimizer(model, OptimConfig(weight_decay=0.1))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert len(no_decay["params"]) == 4  # embedding, linear bias, norm weight and bias


def test_cpu_training_uses_the_fused_adamw_kernel_with_the_same_update():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(50, 8), torch.nn.Linear(8, 8))
    twin = torch.nn.Sequential(torch.nn.Embedding(50, 8), torch.nn.Linear(8, 8))
    twin.load_state_dict(model.state_dict())
    fused = build_optimizer(model, OptimConfig(lr=1e-2))
    assert fused.defaults["fused"] is True  # the per-tensor loop is ~4x slower on CPU
    plain = torch.optim.AdamW(
        [
            {"params": [twin[1].weight], "weight_decay": 0.01},
            {"params": [twin[0].weight, twin[1].bias], "weight_decay": 0.0},
        ],
        lr=1e-2,
    )
    for _ in range(3):
        for net, opt in ((model, fused), (twin, plain)):
            opt.zero_grad()
            net(torch.arange(10)).square().sum().backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b)
