"""THE list of objectives: adding an objective is its module plus one name here."""

from __future__ import annotations

import difflib

from tokenizers import Tokenizer

from llmtune.config.schema import DataConfig, ObjectiveConfig, RunConfig
from llmtune.data import TokenizerInfo
from llmtune.errors import ConfigError
from llmtune.models.family import Kind
from llmtune.objectives import (
    clm,
    contrastive,
    denoising,
    distill,
    distill_tokens,
    dpo,
    mlm,
    multitask,
    ppo,
    reward,
    seq2seq,
    seq_cls,
    sft,
    span_corruption,
    span_mlm,
    token_cls,
)
from llmtune.objectives.base import Objective
from llmtune.objectives.entry import Context, ObjectiveEntry


def entry(name: str) -> ObjectiveEntry:
    """The registered objective `name`, or a one-line error naming the closest one."""
    if name in OBJECTIVES:
        return OBJECTIVES[name]
    close = difflib.get_close_matches(name, OBJECTIVES, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ConfigError(
        f"objective.name={name!r}: no such objective{hint} (objectives: {', '.join(OBJECTIVES)})"
    )


OBJECTIVES: dict[str, ObjectiveEntry] = {
    e.name: e
    for e in (
        mlm.MLM,
        mlm.MLM_NSP,
        span_mlm.ENTRY,
        clm.ENTRY,
        seq_cls.ENTRY,
        distill.ENTRY,
        distill_tokens.TOKEN_CLS,
        distill_tokens.MLM,
        distill_tokens.CLM,
        distill_tokens.SFT,
        token_cls.ENTRY,
        sft.ENTRY,
        contrastive.ENTRY,
        reward.ENTRY,
        dpo.ENTRY,
        ppo.ENTRY,
        span_corruption.ENTRY,
        denoising.ENTRY,
        seq2seq.ENTRY,
        multitask.entry(entry),
    )
}


def build_objective(
    cfg: ObjectiveConfig,
    info: TokenizerInfo,
    tokenizer: Tokenizer | None = None,
    data: DataConfig | None = None,
    labels: list | None = None,
    kind: Kind | None = None,
) -> Objective:
    """The objective `cfg` configures, made from settings alone (for scripts and tests):
    `kind` is the model family's (default: the first kind the objective trains)."""
    found = entry(cfg.name)
    config = RunConfig(objective=cfg, data=data or DataConfig())
    ctx = Context(config, tokenizer, info, kind or found.kinds[0])
    return found.make(ctx, list(labels or []))
