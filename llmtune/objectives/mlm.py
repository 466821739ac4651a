"""BERT masked LM (`mlm`), optionally with next-sentence prediction (`mlm_nsp`).

The vocabulary projection runs only at masked positions: ~15% of the positions
carry a target, so projecting the rest to 30k logits would be wasted work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from llmtune.config.schema import ObjectiveConfig, RunConfig
from llmtune.data import TokenizerInfo, build_pairs
from llmtune.errors import ConfigError
from llmtune.models.family import Kind
from llmtune.objectives.base import Batch, ObjectiveBase, TermResult, sum_cross_entropy
from llmtune.objectives.entry import Context, ObjectiveEntry, Scoring, text_build
from llmtune.objectives.masking import MaskingSpec, mask_tokens


@dataclass(frozen=True)
class MLMConfig(ObjectiveConfig):
    """Masked language modelling (an encoder's pretraining)."""

    name: str = "mlm"  # registered objective name (objectives/registry.py)
    mask_prob: float = 0.15  # share of real tokens chosen as targets
    mask_token_frac: float = 0.8  # of chosen positions: replaced by [MASK]
    random_token_frac: float = 0.1  # replaced by a random token; the rest stay unchanged


@dataclass(frozen=True)
class MLMNSPConfig(MLMConfig):
    """Masked LM plus next-sentence prediction (BERT's original pretraining)."""

    name: str = "mlm_nsp"  # registered objective name (objectives/registry.py)
    nsp_prob: float = 0.5  # share of pairs whose B segment is random


class MaskedLM(ObjectiveBase):
    name = "mlm"
    lm_term = "mlm"
    perplexity = True
    vocab_head = True
    packed = True

    def __init__(self, info: TokenizerInfo, masking: MaskingSpec, nsp_prob: float = 0.0) -> None:
        self.info = info
        self.masking = masking
        self.nsp_prob = nsp_prob
        self.with_nsp = nsp_prob > 0
        self.heads = ("mlm", "nsp") if self.with_nsp else ("mlm",)
        if self.with_nsp:
            self.name = "mlm_nsp"

    def make_examples(self, token_ids, seq_len: int, seed: int) -> Batch:
        return build_pairs(token_ids, seq_len, self.info, self.nsp_prob, seed)

    def prepare(self, batch: Batch, generator: torch.Generator) -> Batch:
        masked, labels = mask_tokens(batch["input_ids"], self.masking, generator)
        return {**batch, "input_ids": masked, "mlm_labels": labels}

    def count(self, batch: Batch) -> dict[str, Tensor]:
        counts = {"mlm": (batch["mlm_labels"] != -100).sum()}
        if self.with_nsp:
            counts["nsp"] = torch.tensor(batch["nsp_labels"].numel())
        return counts

    @staticmethod
    def masked_logits(
        model: torch.nn.Module, hidden: Tensor, batch: Batch
    ) -> tuple[Tensor, Tensor]:
        """([n_masked, V] logits, [n_masked] targets) of [B, T, D] `hidden` at the masked
        positions, in row order."""
        labels = batch["mlm_labels"]
        at_masks = labels != -100  # [B, T]
        return model.heads["mlm"](hidden[at_masks]), labels[at_masks]

    def losses(self, model: torch.nn.Module, batch: Batch) -> dict[str, TermResult]:
        hidden = model.backbone.features(batch)  # [B, T, D]
        terms = {"mlm": sum_cross_entropy(*self.masked_logits(model, hidden, batch))}
        if self.with_nsp:
            nsp_logits = model.heads["nsp"](model.backbone.pool(hidden))  # [B, 2]
            terms["nsp"] = sum_cross_entropy(nsp_logits, batch["nsp_labels"])
        return terms

    def input_tokens(self, batch: Batch) -> int:
        return int(batch["attention_mask"].sum())


def check(config: RunConfig, kind: Kind | None) -> None:
    o = config.objective
    if not 0 < o.mask_prob < 1:
        raise ConfigError(f"objective.mask_prob={o.mask_prob}: must be in (0, 1)")
    for key in ("mask_token_frac", "random_token_frac"):
        if not 0 <= getattr(o, key) <= 1:
            raise ConfigError(f"objective.{key}={getattr(o, key)}: must be in [0, 1]")
    if o.mask_token_frac + o.random_token_frac > 1:
        raise ConfigError("objective.mask_token_frac + objective.random_token_frac must be <= 1")
    if isinstance(o, MLMNSPConfig) and not 0 <= o.nsp_prob <= 1:
        raise ConfigError(f"objective.nsp_prob={o.nsp_prob}: must be in [0, 1]")


def make(ctx: Context, labels: list) -> MaskedLM:
    cfg, info = ctx.config.objective, ctx.info
    masking = MaskingSpec(
        mask_prob=cfg.mask_prob,
        mask_token_frac=cfg.mask_token_frac,
        random_token_frac=cfg.random_token_frac,
        mask_id=info.mask_id,
        vocab_size=info.vocab_size,
        special_ids=info.special_ids,
    )
    return MaskedLM(info, masking, cfg.nsp_prob if isinstance(cfg, MLMNSPConfig) else 0.0)


MLM = ObjectiveEntry(
    name="mlm",
    config=MLMConfig,
    kinds=(Kind.ENCODER,),
    labelled=False,
    heads=lambda config: ("mlm",),
    make=make,
    build=text_build(make),
    scoring=Scoring.LANGUAGE_MODEL,
    check=check,
    vocab_share=lambda cfg, seq_len: cfg.mask_prob,
)
MLM_NSP = ObjectiveEntry(
    name="mlm_nsp",
    config=MLMNSPConfig,
    kinds=(Kind.ENCODER,),
    labelled=False,
    heads=lambda config: ("mlm", "nsp"),
    make=make,
    build=text_build(make),
    scoring=Scoring.LANGUAGE_MODEL,
    check=check,
    vocab_share=lambda cfg, seq_len: cfg.mask_prob,
)
