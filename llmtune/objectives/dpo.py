"""Direct preference optimisation (`dpo`) and its IPO variant on a GPT: the policy's log-ratio
to a frozen reference must favour the chosen response over the rejected one."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import Tensor

from llmtune.config.schema import DataConfig, RunConfig, TokenizerConfig
from llmtune.data import TokenizerInfo
from llmtune.data.preference import preference_columns
from llmtune.errors import ConfigError
from llmtune.models.family import Kind
from llmtune.objectives.base import Batch, TermResult
from llmtune.objectives.entry import Built, Context, ObjectiveEntry, Scoring
from llmtune.objectives.preference import PairTask, Reference, build_pairs_task, sequence_logps
from llmtune.objectives.sft import PromptedConfig, check_template

LOSSES = ("dpo", "ipo")


@dataclass(frozen=True)
class DPOConfig(PromptedConfig):
    """Direct preference optimisation against the frozen model as loaded."""

    name: str = "dpo"  # registered objective name (objectives/registry.py)
    beta: float = 0.1  # strength of the implicit KL to the reference
    loss: str = "dpo"  # dpo (sigmoid) | ipo (squared, to a fixed margin)


def preference_loss(log_ratio_margin: Tensor, beta: float, kind: str) -> Tensor:
    """[B] loss of h = (log pi_c - log ref_c) - (log pi_r - log ref_r).

    dpo: -log sigmoid(beta * h) (log 2 when the policy equals the reference);
    ipo: (h - 1 / (2 beta))^2, which pulls h to a fixed target instead of pushing it to
    infinity, so it cannot overfit deterministic preferences.
    """
    if kind == "ipo":
        return (log_ratio_margin - 1 / (2 * beta)) ** 2
    return F.softplus(-beta * log_ratio_margin)


class DirectPreference(PairTask):
    name = "dpo"
    heads = ("lm",)
    lm_term = "dpo"
    needs_reference = True

    def __init__(
        self,
        info: TokenizerInfo,
        tokenizer: Tokenizer,
        data: DataConfig,
        template: str,
        settings: tuple[float, str],
        chat: TokenizerConfig | None = None,
    ) -> None:
        super().__init__(info, tokenizer, data, template, Kind.DECODER, chat)
        self.beta, self.kind = settings
        if self.kind not in LOSSES:
            raise ConfigError(f"objective.loss={self.kind!r}: expected one of {', '.join(LOSSES)}")
        if self.beta <= 0:
            raise ConfigError(f"objective.beta={self.beta}: must be positive")
        self.reference: Reference | None = None

    def bind(self, model: torch.nn.Module, config: RunConfig) -> None:
        """Take the reference from the model as loaded, before any method or training."""
        self.reference = Reference.of(model, config)

    def losses(self, model: torch.nn.Module, batch: Batch) -> dict[str, TermResult]:
        if self.reference is None:
            raise RuntimeError("DirectPreference.bind(model, config) must run before training")
        policy_c, policy_r = sequence_logps(model, batch).chunk(2)
        ref_c, ref_r = self.reference.run(model, sequence_logps, batch).chunk(2)
        chosen, rejected = policy_c - ref_c, policy_r - ref_r  # log-ratios to the reference
        h = chosen - rejected
        n = torch.tensor(h.numel(), device=h.device)
        d = h.detach()
        extra = {
            # DPO's implicit rewards beta * log-ratio, and the plain log-probability margin
            "reward_margin": ((self.beta * d).sum(), n),
            "chosen_reward": ((self.beta * chosen.detach()).sum(), n),
            "rejected_reward": ((self.beta * rejected.detach()).sum(), n),
            "logp_margin": ((policy_c - policy_r).detach().sum(), n),
            # pairwise accuracy by plain log-probability, of the policy and of the reference
            # (the model as loaded): what tuning changed, measured on the same pairs
            "logp_accuracy": ((policy_c > policy_r).sum(), n),
            "reference_logp_accuracy": ((ref_c > ref_r).sum(), n),
        }
        loss = preference_loss(h, self.beta, self.kind).sum()
        return {"dpo": TermResult(loss, (d > 0).sum(), extra=extra)}


def check(config: RunConfig, kind: Kind | None) -> None:
    check_template(config, kind)
    o = config.objective
    if o.loss not in LOSSES:
        raise ConfigError(f"objective.loss={o.loss!r}: expected one of {', '.join(LOSSES)}")
    if o.beta <= 0:
        raise ConfigError(f"objective.beta={o.beta}: must be positive")


def make(ctx: Context, labels: list) -> DirectPreference:
    cfg = ctx.config.objective
    settings = (cfg.beta, cfg.loss)
    config = ctx.config
    return DirectPreference(
        ctx.info, ctx.tokenizer, config.data, cfg.prompt_template, settings, config.tokenizer
    )


def build(ctx: Context) -> Built:
    return build_pairs_task(ctx, make)


ENTRY = ObjectiveEntry(
    name="dpo",
    config=DPOConfig,
    kinds=(Kind.DECODER,),
    labelled=True,
    heads=lambda config: ("lm",),
    make=make,
    build=build,
    scoring=Scoring.PAIRWISE,
    check=check,
    columns=lambda cfg, data: preference_columns(data),
)
