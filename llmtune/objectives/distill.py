"""Knowledge distillation (`distill`) of a sequence classifier: the student learns the frozen
teacher's temperature-softened class distribution (KL, scaled by T^2 as Hinton et al. do so
its gradients keep their size) mixed with the hard labels (weight alpha)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llmtune.config.schema import RunConfig
from llmtune.errors import CheckpointError, ConfigError
from llmtune.models.family import Kind
from llmtune.objectives import seq_cls
from llmtune.objectives.base import Batch, TermResult
from llmtune.objectives.classification import ClassificationConfig, check_classification
from llmtune.objectives.entry import Context
from llmtune.objectives.seq_cls import SequenceClassification


@dataclass(frozen=True)
class DistillConfig(ClassificationConfig):
    """A seq_cls student taught by a frozen seq_cls teacher with the same tokenizer and labels."""

    name: str = "distill"  # registered objective name (objectives/registry.py)
    teacher: str = ""  # the teacher: a seq_cls checkpoint (step folder, run dir or hf:<folder>)
    temperature: float = 2.0  # softens both distributions before the KL
    alpha: float = 0.5  # weight of the hard-label loss; the KL term weighs 1 - alpha


def check(config: RunConfig, kind: Kind | None) -> None:
    check_classification(config, kind)
    cfg = config.objective
    if not cfg.teacher:
        raise ConfigError("objective.teacher is required: a seq_cls checkpoint to learn from")
    if cfg.temperature <= 0:
        raise ConfigError(f"objective.temperature={cfg.temperature}: must be positive")
    if not 0 <= cfg.alpha <= 1:
        raise ConfigError(f"objective.alpha={cfg.alpha}: must be in [0, 1]")


class Distillation(SequenceClassification):
    name = "distill"

    def __init__(self, ctx: Context, labels: list) -> None:
        super().__init__(ctx.info, labels, ctx.tokenizer, ctx.config.data)
        self.cfg = ctx.config.objective
        # evaluate scores a distilled checkpoint by its own predictions: no teacher there
        self.teacher = None if ctx.load_checkpoint is None else self._teacher(ctx, labels)

    def _teacher(self, ctx: Context, labels: list) -> torch.nn.Module:
        loaded = ctx.load_checkpoint(self.cfg.teacher)
        where = f"objective.teacher={self.cfg.teacher}"
        if "seq_cls" not in loaded.model.heads:
            raise CheckpointError(
                f"{where}: has no seq_cls head (objective={loaded.meta.get('objective')}); "
                "the teacher is a sequence classifier"
            )
        if loaded.tokenizer.get_vocab() != ctx.tokenizer.get_vocab():
            raise CheckpointError(f"{where}: its tokenizer differs from init_from's")
        theirs = [str(x) for x in loaded.meta.get("labels") or []]
        if labels and theirs != [str(x) for x in labels]:
            raise CheckpointError(f"{where}: its labels {theirs} differ from the data's {labels}")
        return loaded.model.requires_grad_(False).eval()

    def bind(self, model: torch.nn.Module, config: RunConfig) -> None:
        if self.teacher is not None:
            self.teacher.to(next(model.parameters()).device)

    def losses(self, model: torch.nn.Module, batch: Batch) -> dict[str, TermResult]:
        logits = self.logits(model, batch)
        hard = self.hard_loss(logits, batch)
        if self.teacher is None:
            return {"seq_cls": hard}
        with torch.no_grad():  # the teacher read through the same seq_cls head and pooling
            target = self.logits(self.teacher, batch)
        t = self.cfg.temperature
        # summed over rows like the hard loss, so the loop's per-row normalisation holds
        kl = F.kl_div(
            F.log_softmax(logits.float() / t, -1),
            F.log_softmax(target.float() / t, -1),
            log_target=True,
            reduction="sum",
        )
        soft = kl * t * t
        hard.loss_sum = self.cfg.alpha * hard.loss_sum + (1 - self.cfg.alpha) * soft
        return {"seq_cls": hard}


def make(ctx: Context, labels: list) -> Distillation:
    return Distillation(ctx, labels)


# seq_cls's entry (heads, columns, target, scoring, rows) with the teacher's config and checks
ENTRY = dataclasses.replace(
    seq_cls.ENTRY,
    name="distill",
    config=DistillConfig,
    make=make,
    build=seq_cls.classifier_build(make),
    check=check,
)
