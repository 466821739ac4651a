"""Attention-head pruning: a model with heads cut out computes what the full model computes
with those heads' outputs masked to zero; the global ranking keeps a head in every block; the
measured importance of a head that contributes nothing is zero."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from llmtune.config.schema import EvaluateConfig
from llmtune.errors import ConfigError
from llmtune.models import build_model
from llmtune.models.bert import BertConfig
from llmtune.models.generation import generate
from llmtune.models.gpt import GPTConfig
from llmtune.objectives.base import pooled_features
from llmtune.prune import importance, surgery

SMALL = {"vocab_size": 50, "d_model": 32, "n_layers": 3, "n_heads": 4, "d_ff": 64}
NO_DROPOUT = {"dropout": 0.0, "attn_dropout": 0.0, "max_seq_len": 16}
KEEP_HEADS = [torch.tensor([0, 2]), torch.tensor([3]), torch.arange(4)]


def model_of(family: str) -> torch.nn.Module:
    config = (BertConfig if family == "bert" else GPTConfig)(**SMALL, **NO_DROPOUT)
    torch.manual_seed(0)
    return build_model(config, ("seq_cls",), n_labels=3).eval()


def batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(5, 50, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # a padded row
    return {"input_ids": ids, "attention_mask": mask}


def masked_logits(model: torch.nn.Module, keep: list[torch.Tensor], rows: dict) -> torch.Tensor:
    """The full model's seq_cls logits with every head outside `keep` gated to zero."""
    blocks = importance.blocks_of(model)
    gates = [torch.zeros(4).index_fill(0, k, 1.0) for k in keep]
    handles = [importance.gate_heads(b.attn, g) for b, g in zip(blocks, gates)]
    try:
        return model.heads["seq_cls"](pooled_features(model, rows))
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("family", ["bert", "gpt"])
@torch.no_grad()
def test_a_head_pruned_model_computes_the_masked_models_logits(family):
    model = model_of(family)
    keep = surgery.Keep([0, 1, 2], [torch.arange(64)] * 3, KEEP_HEADS)
    small = surgery.pruned(model, keep, n_labels=3)
    assert small.config.layer_heads == (2, 1, 4)
    assert [b.attn.n_heads for b in importance.blocks_of(small)] == [2, 1, 4]
    assert small.num_parameters() < model.num_parameters()
    rows = batch()
    got = small.heads["seq_cls"](pooled_features(small, rows))
    torch.testing.assert_close(got, masked_logits(model, KEEP_HEADS, rows))
    # and masking is not a no-op: the full model's logits differ
    full = model.heads["seq_cls"](pooled_features(model, rows))
    assert not torch.allclose(full, got, atol=1e-4)


@torch.no_grad()
def test_heads_and_blocks_prune_together_and_prune_again():
    model = model_of("bert")
    keep = surgery.Keep([0, 2], [torch.arange(64)] * 3, KEEP_HEADS)
    small = surgery.pruned(model, keep, n_labels=3)
    assert small.config.layer_heads == (2, 4) and small.config.n_layers == 2
    # a pruned model prunes again: its block 1 (old block 2) loses heads 0 and 3
    again = surgery.pruned(
        small,
        surgery.Keep([0, 1], [torch.arange(64)] * 2, [torch.arange(2), torch.tensor([1, 2])]),
        n_labels=3,
    )
    assert again.config.layer_heads == (2, 2)
    rows = batch()
    skip = importance.blocks_of(model)[1].register_forward_hook(importance._skip)
    try:  # the original with block 1 skipped and the removed heads of blocks 0 and 2 masked
        expected = masked_logits(
            model, [KEEP_HEADS[0], torch.arange(4), torch.tensor([1, 2])], rows
        )
    finally:
        skip.remove()
    torch.testing.assert_close(again.heads["seq_cls"](pooled_features(again, rows)), expected)


def test_the_global_ranking_keeps_a_head_in_every_block():
    scores = [torch.tensor([0.1, 0.2]), torch.tensor([0.9, 0.05, 0.8]), torch.tensor([0.01])]
    kept = surgery.keep_heads(scores, 3)
    # least important first: 0.01 (block 2's only head: stays), 0.05 and 0.1 go, 0.2 (block
    # 0's last: stays), 0.8 goes
    assert [k.tolist() for k in kept] == [[1], [0], [0]]
    assert [k.tolist() for k in surgery.keep_heads(scores, 0)] == [[0, 1], [0, 1, 2], [0]]


def test_a_head_that_adds_nothing_has_zero_importance():
    model = model_of("bert")
    attn = importance.blocks_of(model)[1].attn
    with torch.no_grad():  # head 2 of block 1 writes nothing into the residual stream
        attn.proj.weight[:, 2 * attn.head_size : 3 * attn.head_size] = 0
    loss = SimpleNamespace(
        losses=lambda m, b: {"x": SimpleNamespace(loss_sum=pooled_features(m, b).pow(2).sum())},
        count=lambda b: {"x": torch.tensor(2)},
    )
    scores = importance.head_importance(model, importance.LossData(loss, [batch(), batch()]))
    assert [len(s) for s in scores] == [4, 4, 4]
    assert float(scores[1][2]) == 0.0 and all(float(s.norm()) == pytest.approx(1) for s in scores)
    assert all(p.grad is None for p in model.parameters())  # no gradients left behind


def test_layer_heads_must_name_one_count_per_block():
    with pytest.raises(ConfigError, match=r"model.layer_heads=\[2, 1\]: needs one count"):
        BertConfig(**SMALL, layer_heads=(2, 1)).check()
    with pytest.raises(ConfigError, match="needs one count in 1..4"):
        GPTConfig(**SMALL, layer_heads=(2, 0, 4)).check()


@torch.no_grad()
def test_a_head_pruned_gpt_generates_the_same_with_and_without_its_cache():
    config = GPTConfig(**SMALL, **NO_DROPOUT)
    torch.manual_seed(0)
    model = build_model(config, ("lm",)).eval()
    keep = surgery.Keep([0, 1, 2], [torch.arange(64)] * 3, KEEP_HEADS)
    small = surgery.pruned(model, keep, n_labels=0)
    cfg = EvaluateConfig(max_new_tokens=6, stop_at_eos=False, batch_size=2)
    prompts = [[5, 6, 7, 8], [9, 10]]  # different lengths: a padded batch
    cached = generate(small, prompts, cfg, eos_id=None, use_cache=True)
    full = generate(small, prompts, cfg, eos_id=None, use_cache=False)
    assert [g.token_ids for g in cached] == [g.token_ids for g in full]
    assert all(len(g.token_ids) == 6 for g in cached)
