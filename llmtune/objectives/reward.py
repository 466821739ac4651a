"""Reward models (`reward`): a scalar head scores prompt + response, trained on preference
pairs with the pairwise (Bradley-Terry) loss -log sigmoid(r_chosen - r_rejected)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from llmtune.data.preference import preference_columns
from llmtune.objectives.base import Batch, TermResult, pooled_features
from llmtune.objectives.entry import ANY_KIND, Built, Context, ObjectiveEntry, Scoring
from llmtune.objectives.preference import PairTask, build_pairs_task
from llmtune.objectives.sft import PromptedConfig, check_template


@dataclass(frozen=True)
class RewardConfig(PromptedConfig):
    """A scalar head trained on (prompt, chosen, rejected) pairs (Bradley-Terry loss)."""

    name: str = "reward"  # registered objective name (objectives/registry.py)


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


def make(ctx: Context, labels: list) -> RewardModel:
    cfg = ctx.config.objective
    config = ctx.config
    return RewardModel(
        ctx.info, ctx.tokenizer, config.data, cfg.prompt_template, ctx.kind, config.tokenizer
    )


def build(ctx: Context) -> Built:
    return build_pairs_task(ctx, make)


ENTRY = ObjectiveEntry(
    name="reward",
    config=RewardConfig,
    kinds=ANY_KIND,
    labelled=True,
    heads=lambda config: ("reward",),
    make=make,
    build=build,
    scoring=Scoring.PAIRWISE,
    check=check_template,
    columns=lambda cfg, data: preference_columns(data),
)
