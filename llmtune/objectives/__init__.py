"""Training objectives by registered name; each builds its own targets and loss terms."""

from __future__ import annotations

from tokenizers import Tokenizer

from llmtune.config.schema import DataConfig, ObjectiveConfig
from llmtune.data import TokenizerInfo
from llmtune.errors import ConfigError
from llmtune.objectives.base import Objective, TermResult
from llmtune.objectives.clm import CausalLM
from llmtune.objectives.contrastive import Contrastive
from llmtune.objectives.dpo import DirectPreference
from llmtune.objectives.masking import MaskingSpec
from llmtune.objectives.mlm import MaskedLM
from llmtune.objectives.ppo import ProximalPolicy
from llmtune.objectives.reward import RewardModel
from llmtune.objectives.seq_cls import SequenceClassification
from llmtune.objectives.sft import InstructionTuning
from llmtune.objectives.token_cls import TokenClassification

__all__ = [
    "Objective",
    "TermResult",
    "build_objective",
    "build_task",
    "OBJECTIVE_NAMES",
    "TASK_OBJECTIVES",
    "TASKS",
    "task_columns",
]

OBJECTIVE_NAMES = ("mlm", "mlm_nsp", "clm", "seq_cls", "token_cls", "sft", "contrastive")
OBJECTIVE_NAMES += ("reward", "dpo", "ppo")
# Objectives on labelled data, built by `build_task`; each class offers columns(data) and
# label_values(split, data) before it is built (the labels are needed to build it).
TASKS = {
    "seq_cls": SequenceClassification,
    "token_cls": TokenClassification,
    "sft": InstructionTuning,
    "contrastive": Contrastive,
    "reward": RewardModel,
    "dpo": DirectPreference,
    "ppo": ProximalPolicy,
}
TASK_OBJECTIVES = tuple(TASKS)


def task_columns(cfg: ObjectiveConfig, data: DataConfig) -> list[str]:
    """Columns a task reads; contrastive's depend on objective.positives too."""
    if cfg.name == "contrastive":
        return Contrastive.columns(data, cfg)
    return TASKS[cfg.name].columns(data)


def build_task(
    cfg: ObjectiveConfig,
    info: TokenizerInfo,
    tokenizer: Tokenizer,
    data: DataConfig,
    labels: list | None = None,
) -> SequenceClassification | TokenClassification | InstructionTuning | RewardModel:
    """A task objective on labelled data; `labels` (seq_cls, token_cls) index = class id."""
    if cfg.name == "sft":
        return InstructionTuning(info, tokenizer, data, cfg.prompt_template)
    if cfg.name == "contrastive":
        return Contrastive(info, tokenizer, data, cfg)
    if cfg.name == "reward":
        return RewardModel(info, tokenizer, data, cfg.prompt_template)
    if cfg.name == "dpo":
        return DirectPreference(info, tokenizer, data, cfg.prompt_template, (cfg.beta, cfg.loss))
    if cfg.name == "ppo":
        return ProximalPolicy(info, tokenizer, data, cfg)
    if cfg.name not in ("seq_cls", "token_cls") or not labels:
        raise ConfigError(f"objective.name={cfg.name!r}: not a task with labels")
    task = SequenceClassification if cfg.name == "seq_cls" else TokenClassification
    return task(info, list(labels), tokenizer, data)


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
