"""Training objectives by registered name; each builds its own targets and loss terms."""

from __future__ import annotations

from llmtune.config.schema import ObjectiveConfig
from llmtune.data import TokenizerInfo
from llmtune.errors import ConfigError
from llmtune.objectives.base import Objective, TermResult
from llmtune.objectives.clm import CausalLM
from llmtune.objectives.masking import MaskingSpec
from llmtune.objectives.mlm import MaskedLM

__all__ = ["Objective", "TermResult", "build_objective", "OBJECTIVE_NAMES"]

OBJECTIVE_NAMES = ("mlm", "mlm_nsp", "clm")


def build_objective(cfg: ObjectiveConfig, info: TokenizerInfo) -> Objective:
    """The objective named by `cfg.name`, wired to the tokenizer's special ids."""
    if cfg.name == "clm":
        return CausalLM(info.eos_id, cfg.separate_documents)
    if cfg.name in ("mlm", "mlm_nsp"):
        masking = MaskingSpec(
            mask_prob=cfg.mask_prob,
            mask_token_frac=cfg.mask_token_frac,
            random_token_frac=cfg.random_token_frac,
            mask_id=info.mask_id,
            vocab_size=info.vocab_size,
            special_ids=info.special_ids,
        )
        return MaskedLM(info, masking, cfg.nsp_prob if cfg.name == "mlm_nsp" else 0.0)
    raise ConfigError(f"objective.name={cfg.name!r}: expected one of {', '.join(OBJECTIVE_NAMES)}")
