"""Reward models (`reward`): a scalar head scores prompt + response, trained on preference
pairs with the pairwise (Bradley-Terry) loss -log sigmoid(r_chosen - r_rejected)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from llmtune.objectives.base import Batch, TermResult, pooled_features
from llmtune.objectives.preference import PairTask


def pairwise_loss(chosen: Tensor, rejected: Tensor) -> Tensor:
    """[B] -log sigmoid(r_c - r_r), as softplus(r_r - r_c) (stable for large margins)."""
    return F.softplus(rejected - chosen)


def scores(model: torch.nn.Module, batch: Batch) -> Tensor:
    """[N] reward of each row: the `reward` head on pooled features (gpt: the last real
    token, which has seen the whole sequence; bert: the pooled [CLS])."""
    return model.heads["reward"](pooled_features(model, batch)).float()


class RewardModel(PairTask):
    name = "reward"
    heads = ("reward",)
    lm_term = "reward"

    def losses(self, model: torch.nn.Module, batch: Batch) -> dict[str, TermResult]:
        chosen, rejected = scores(model, batch).chunk(2)
        n = torch.tensor(chosen.numel(), device=chosen.device)
        margin = (chosen - rejected).detach()
        extra = {"margin": (margin.sum(), n), "chosen_score": (chosen.detach().sum(), n)}
        # n_correct is the pairwise accuracy's numerator: val_reward_accuracy
        return {
            "reward": TermResult(
                pairwise_loss(chosen, rejected).sum(), (margin > 0).sum(), extra=extra
            )
        }
