"""Span masking (`span_mlm`, SpanBERT's scheme): whole contiguous spans of tokens become
targets instead of single tokens, so a target's neighbours are hidden with it and the encoder
must predict from the span's context. Span lengths follow a geometric distribution (mean
`mean_span_length`, clipped at `max_span_length`); spans are drawn until mask_prob of each
row's real tokens are targets; the chosen positions then show [MASK], a random token or
themselves (80/10/10) as in `mlm`. Same head (mlm) and loss as `mlm`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from llmtune.config.schema import RunConfig
from llmtune.data import TokenizerInfo
from llmtune.errors import ConfigError
from llmtune.models.family import Kind
from llmtune.objectives import mlm
from llmtune.objectives.base import Batch
from llmtune.objectives.entry import Context, ObjectiveEntry, Scoring, text_build
from llmtune.objectives.masking import MaskingSpec, replace_chosen, special_positions


@dataclass(frozen=True)
class SpanMLMConfig(mlm.MLMConfig):
    """Masked LM of contiguous spans (SpanBERT): span lengths ~ geometric, clipped."""

    name: str = "span_mlm"  # registered objective name (objectives/registry.py)
    mean_span_length: float = 3.0  # mean of the geometric span-length distribution (>= 1)
    max_span_length: int = 10  # longer draws are clipped to this many tokens


def span_lengths(n: int, mean: float, longest: int, generator: torch.Generator) -> list[int]:
    """n span lengths ~ Geometric(p = 1/mean) on 1, 2, ..., clipped at `longest`."""
    if mean <= 1:
        return [1] * n
    draw = torch.rand(n, generator=generator).clamp_min(1e-12)  # inverse CDF of the geometric
    lengths = torch.floor(torch.log(draw) / math.log(1 - 1 / mean)).long() + 1
    return lengths.clamp(1, longest).tolist()


def choose_spans(
    real: Tensor, share: float, mean: float, longest: int, generator: torch.Generator
) -> Tensor:
    """Boolean [B, T]: spans of `real` positions (special tokens are skipped, never chosen)
    covering round(share x real tokens) of each row, at least one token of a non-empty row."""
    chosen = torch.zeros_like(real)
    for row in range(real.shape[0]):
        positions = real[row].nonzero().flatten()  # spans run over real tokens only
        n_real = len(positions)
        want = max(1, round(share * n_real)) if n_real else 0
        while int(chosen[row].sum()) < want:
            (length,) = span_lengths(1, mean, longest, generator)
            start = int(torch.randint(n_real, (1,), generator=generator))
            span = positions[start : start + min(length, want - int(chosen[row].sum()))]
            chosen[row, span] = True
    return chosen


class SpanMaskedLM(mlm.MaskedLM):
    name = "span_mlm"

    def __init__(self, info: TokenizerInfo, masking: MaskingSpec, cfg: SpanMLMConfig) -> None:
        super().__init__(info, masking)
        self.name, self.cfg = "span_mlm", cfg

    def prepare(self, batch: Batch, generator: torch.Generator) -> Batch:
        ids = batch["input_ids"]
        real = ~special_positions(ids, self.masking)
        cfg = self.cfg
        chosen = choose_spans(
            real, cfg.mask_prob, cfg.mean_span_length, cfg.max_span_length, generator
        )
        masked, labels = replace_chosen(ids, chosen, self.masking, generator)
        return {**batch, "input_ids": masked, "mlm_labels": labels}


def check(config: RunConfig, kind: Kind | None) -> None:
    mlm.check(config, kind)  # mask_prob and the 80/10/10 split
    o = config.objective
    if o.mean_span_length < 1:
        raise ConfigError(f"objective.mean_span_length={o.mean_span_length}: must be >= 1")
    if o.max_span_length < 1:
        raise ConfigError(f"objective.max_span_length={o.max_span_length}: must be >= 1")


def make(ctx: Context, labels: list) -> SpanMaskedLM:
    masking = mlm.make(ctx, labels).masking  # mlm's spec: mask_prob, 80/10/10, the ids
    return SpanMaskedLM(ctx.info, masking, ctx.config.objective)


ENTRY = ObjectiveEntry(
    name="span_mlm",
    config=SpanMLMConfig,
    kinds=(Kind.ENCODER,),
    labelled=False,
    heads=lambda config: ("mlm",),
    make=make,
    build=text_build(make),
    scoring=Scoring.LANGUAGE_MODEL,
    check=check,
    vocab_share=lambda cfg, seq_len: cfg.mask_prob,
)
