"""The loop's optimizer step equals torch's clip_grad_norm_ over the trainable parameters
followed by AdamW, bit for bit, whether the norm is clipped, within the limit (the loop then
skips the scaling by 1.0) or clipping is off: the trainable list is taken once, when the
Trainer is built, and frozen parameters never move."""

from __future__ import annotations

import copy

import pytest
import torch

from llmtune.config.schema import HardwareConfig, OptimConfig, RunConfig, TrainConfig
from llmtune.models import build_model
from llmtune.objectives import build_objective, entry
from llmtune.train.hardware import resolve_runtime
from llmtune.train.loop import Trainer, TrainSetup
from llmtune.train.optim import build_optimizer
from tests.unit.train.test_accumulation import BERT_INFO, examples, tiny_model


@pytest.mark.parametrize("grad_clip", [0.05, 1e3, 0.0])  # clips every step, never, off
def test_optimizer_step_matches_torch_clipping_and_leaves_frozen_weights(tmp_path, grad_clip):
    config = RunConfig(
        model=tiny_model("bert"),
        objective=entry("mlm").config(),
        train=TrainConfig(global_batch_size=8, micro_batch_size=8),
        optim=OptimConfig(grad_clip=grad_clip),
        hardware=HardwareConfig(device="cpu", precision="fp32"),
    )
    objective = build_objective(config.objective, BERT_INFO)
    torch.manual_seed(0)
    model = build_model(config.model, objective.heads)
    frozen = model.backbone.blocks[0]
    frozen.requires_grad_(False)  # as freezing or LoRA do, before the Trainer is built
    runtime = resolve_runtime(config.hardware)
    data = examples("bert")
    t = Trainer(TrainSetup(config, model, objective, data, data, "{}", tmp_path, runtime, tmp_path))
    before = copy.deepcopy(model.state_dict())
    reference = copy.deepcopy(model)
    optimizer = build_optimizer(reference, config.optim)

    for step in range(3):
        batch = objective.prepare(data, torch.Generator().manual_seed(step))
        t.accumulate_gradients([batch])
        for mine, theirs in zip(model.parameters(), reference.parameters(), strict=True):
            theirs.grad = None if mine.grad is None else mine.grad.clone()
        trained = [p for p in reference.parameters() if p.requires_grad]
        limit = grad_clip or float("inf")  # 0 turns clipping off
        norm = torch.nn.utils.clip_grad_norm_(trained, limit)
        assert (norm > limit) == (grad_clip == 0.05)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t._optimizer_step()
        assert all(p.grad is None for p in model.parameters())

    for (name, mine), theirs in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(mine, theirs), name
    for name, value in frozen.state_dict().items():
        assert torch.equal(value, before[f"backbone.blocks.0.{name}"]), name
    moved = model.backbone.blocks[1].mlp.fc.weight
    assert not torch.equal(moved, before["backbone.blocks.1.mlp.fc.weight"])
