"""InfoNCE by hand, temperature, label positives, and what accumulation does with in-batch
negatives (each micro-batch is its own negative set; the loop sums and divides globally)."""

from __future__ import annotations

import math

import pytest
import torch

from llmtune.config.schema import (
    FilesData,
    HardwareConfig,
    RunConfig,
    TrainConfig,
)
from llmtune.models import build_model
from llmtune.models.pooling import sentence_embedding
from llmtune.objectives.contrastive import (
    Contrastive,
    ContrastiveConfig,
    info_nce,
    label_info_nce,
)
from llmtune.train.loop import Trainer
from tests.unit.train.test_accumulation import BERT_INFO, cpu_trainer, grads, tiny_model


def test_info_nce_matches_a_hand_computation():
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    k = torch.tensor([[1.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])  # third key: a hard negative
    t = 0.5
    cos = [[1 / math.sqrt(2), 0.0, -1.0], [1 / math.sqrt(2), 1.0, 0.0]]
    expected = 0.0
    for i, row in enumerate(cos):
        expected += -row[i] / t + math.log(sum(math.exp(c / t) for c in row))
    result = info_nce(q, k, t)
    assert float(result.loss_sum) == pytest.approx(expected, rel=1e-6)
    assert int(result.n_correct) == 2  # both queries rank their own key first


def test_temperature_sharpens_the_softmax():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(6, 8, generator=g)
    k = q + 0.1 * torch.randn(6, 8, generator=g)  # positives close to their queries
    losses = [float(info_nce(q, k, t).loss_sum) for t in (1.0, 0.1, 0.02)]
    assert losses[0] > losses[1] > losses[2]
    # at T = 1 the loss of identical random-ish pairs stays near log(B): a soft softmax
    assert losses[0] / 6 > 0.5 * math.log(6)


def test_label_positives_by_hand():
    z = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    classes = torch.tensor([0, 0, 1, 1])
    t = 1.0
    zn = torch.nn.functional.normalize(z, dim=-1)
    sims = zn @ zn.T
    expected = 0.0
    for i in range(4):
        others = [j for j in range(4) if j != i]
        log_norm = math.log(sum(math.exp(float(sims[i, j]) / t) for j in others))
        positives = [j for j in others if classes[j] == classes[i]]
        expected += -sum(float(sims[i, j]) / t - log_norm for j in positives) / len(positives)
    result = label_info_nce(z, classes, t)
    assert float(result.loss_sum) == pytest.approx(expected, rel=1e-5)
    assert int(result.n_correct) == 4


def _pair_trainer(tmp_path) -> Trainer:
    config = RunConfig(
        command="finetune",
        model=tiny_model(n_layers=1, max_seq_len=8, n_positions=16),
        objective=ContrastiveConfig(positives="pair", temperature=0.1),
        data=FilesData(text_pair_column="positive"),
        train=TrainConfig(global_batch_size=8, micro_batch_size=4),
        hardware=HardwareConfig(device="cpu", precision="fp32"),
    )
    objective = Contrastive(BERT_INFO, None, config.data, config.objective)
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(8, 8, dtype=torch.long)
    mask[::2, -2:] = 0  # padding on some rows: mean pooling must ignore it
    data = {
        "input_ids": torch.randint(5, 50, (8, 8), generator=g) * mask,
        "attention_mask": mask,
        "token_type_ids": torch.zeros(8, 8, dtype=torch.long),
        "pos_input_ids": torch.randint(5, 50, (8, 8), generator=g),
        "pos_attention_mask": torch.ones(8, 8, dtype=torch.long),
    }
    return cpu_trainer(config, objective, data, tmp_path)


def test_accumulation_sums_micro_batch_info_nce_over_the_global_count(tmp_path):
    """2 x B/2 is the mean over all B anchors of InfoNCE within each half (B/2 - 1 negatives),
    not the InfoNCE of one batch of B: in-batch negatives depend on the micro-batch."""
    t = _pair_trainer(tmp_path)
    batch = t.s.objective.prepare(t.s.train_examples, None)
    halves = [{k: v[:4] for k, v in batch.items()}, {k: v[4:] for k, v in batch.items()}]
    accumulated, whole = grads(t, halves), grads(t, [batch])
    t.model.zero_grad(set_to_none=True)
    by_hand = sum(t.s.objective.losses(t.model, h)["contrastive"].loss_sum for h in halves) / 8
    by_hand.backward()
    expected = [p.grad.clone() for p in t.model.parameters() if p.grad is not None]
    for a, b in zip(accumulated, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert any(not torch.allclose(a, b, atol=1e-6) for a, b in zip(accumulated, whole))


def test_mean_pooling_ignores_padding():
    config = tiny_model(d_model=16, n_layers=1, d_ff=32, max_seq_len=8, n_positions=16)
    model = build_model(config, ()).eval()
    ids = torch.tensor([[2, 7, 9, 3]])
    padded = torch.tensor([[2, 7, 9, 3, 0, 0]])
    a = sentence_embedding(model, ids, torch.ones_like(ids), "mean")
    b = sentence_embedding(model, padded, (padded != 0).long(), "mean")
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
