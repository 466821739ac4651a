"""Knowledge distillation (`distill`) of a sequence classifier: the student learns the frozen
teacher's temperature-softened class distribution (KL, scaled by T^2 as Hinton et al. do so
its gradients keep their size) mixed with the hard labels (weight alpha).

The teacher's keys, checks, loading and the mixed loss live here too: the token-level students
(objectives/distill_tokens.py: token_cls, mlm, clm, sft) share them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from llmtune.config.schema import ObjectiveConfig, RunConfig
from llmtune.errors import CheckpointError, ConfigError
from llmtune.models.family import Kind
from llmtune.models.registry import names_of_kind
from llmtune.objectives import seq_cls
from llmtune.objectives.base import Batch, TermResult
from llmtune.objectives.classification import ClassificationConfig, check_classification
from llmtune.objectives.entry import Context, Loaded
from llmtune.objectives.seq_cls import SequenceClassification


@dataclass(frozen=True)
class TeacherConfig(ObjectiveConfig):
    """The keys every distilled student has: its teacher and how the two losses mix."""

    teacher: str = ""  # a checkpoint with the student's head (step folder, run dir or hf:<folder>)
    temperature: float = 2.0  # softens both distributions before the KL
    alpha: float = 0.5  # weight of the objective's own (hard-target) loss; the KL: 1 - alpha


@dataclass(frozen=True)
class DistillConfig(ClassificationConfig, TeacherConfig):
    """A seq_cls student taught by a frozen seq_cls teacher with the same tokenizer and labels."""

    name: str = "distill"  # registered objective name (objectives/registry.py)


def check_teacher(config: RunConfig, head: str) -> None:
    """objective.teacher is set (a checkpoint with a `head` head), temperature and alpha fit,
    and the command is finetune (pretrain has no checkpoint to start the student from)."""
    cfg = config.objective
    if config.command in ("pretrain", "prepare"):
        raise ConfigError(
            f"objective={cfg.name} trains a student from init_from; use `llmtune finetune`"
        )
    if not cfg.teacher:
        raise ConfigError(
            f"objective.teacher is required: a checkpoint with a {head} head to learn from"
        )
    if cfg.temperature <= 0:
        raise ConfigError(f"objective.temperature={cfg.temperature}: must be positive")
    if not 0 <= cfg.alpha <= 1:
        raise ConfigError(f"objective.alpha={cfg.alpha}: must be in [0, 1]")


def check(config: RunConfig, kind: Kind | None) -> None:
    check_classification(config, kind)
    check_teacher(config, "seq_cls")


def load_teacher(ctx: Context, head: str, labels: list | None = None) -> Loaded:
    """objective.teacher, loaded and checked: it has the student's `head` head, init_from's
    tokenizer (so the same vocabulary) and, for a classifier head, the data's `labels`."""
    teacher = ctx.config.objective.teacher
    loaded = ctx.load_checkpoint(teacher)
    where = f"objective.teacher={teacher}"
    if head not in loaded.model.heads:
        raise CheckpointError(
            f"{where}: has no {head} head (objective={loaded.meta.get('objective')}); "
            f"objective={ctx.config.objective.name} needs a teacher trained with a {head} head"
        )
    if head == "lm" and loaded.model.kind != ctx.kind:  # a T5 reads rows otherwise than a GPT
        raise CheckpointError(
            f"{where}: its {loaded.model.kind} model cannot teach a {ctx.kind} student; "
            f"use a {names_of_kind(ctx.kind)} teacher"
        )
    if loaded.tokenizer.get_vocab() != ctx.tokenizer.get_vocab():
        raise CheckpointError(
            f"{where}: its tokenizer (vocabulary) differs from init_from's; "
            "the teacher must use the student's tokenizer"
        )
    theirs = [str(x) for x in loaded.meta.get("labels") or []]
    if labels and theirs != [str(x) for x in labels]:
        raise CheckpointError(f"{where}: its labels {theirs} differ from the data's {labels}")
    return loaded


def soft_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """T^2 x KL(teacher || student) of [N, C] logits softened by T, summed over the N rows (as
    the hard cross-entropy is summed, so the loop's normalisation holds for both)."""
    kl = F.kl_div(
        F.log_softmax(student.float() / temperature, -1),
        F.log_softmax(teacher.float() / temperature, -1),
        log_target=True,
        reduction="sum",
    )
    return kl * temperature * temperature


class Taught:
    """What a distilled student adds to its objective (mixed in first): the frozen teacher,
    moved to the student's device, and the loss mixed from the hard term and the KL."""

    cfg: TeacherConfig
    teacher: torch.nn.Module | None = None

    def attach_teacher(self, ctx: Context, head: str, labels: list | None = None) -> None:
        self.cfg = ctx.config.objective
        # evaluate scores a distilled checkpoint by its own predictions: no teacher there
        if ctx.load_checkpoint is not None:
            loaded = load_teacher(ctx, head, labels)
            self.teacher = loaded.model.requires_grad_(False).eval()

    def bind(self, model: torch.nn.Module, config: RunConfig) -> None:
        if self.teacher is not None:
            self.teacher.to(next(model.parameters()).device)

    def teaching(self, model: torch.nn.Module) -> bool:
        """Whether the teacher's term applies: while the student trains. Validation reports
        the task's own loss (a loss, perplexity and accuracy comparable with the plain
        objective's), and evaluate has no teacher."""
        return self.teacher is not None and model.training

    def mixed(self, hard: TermResult, student: Tensor, teacher: Tensor) -> TermResult:
        """`hard` with its loss_sum replaced by alpha x hard + (1 - alpha) x T^2 x KL of the
        [N, C] `student` and `teacher` logits of the N targets the hard loss counts."""
        soft = soft_loss(student, teacher, self.cfg.temperature)
        hard.loss_sum = self.cfg.alpha * hard.loss_sum + (1 - self.cfg.alpha) * soft
        return hard


class Distillation(Taught, SequenceClassification):
    name = "distill"

    def __init__(self, ctx: Context, labels: list) -> None:
        super().__init__(ctx.info, labels, ctx.tokenizer, ctx.config.data)
        self.attach_teacher(ctx, "seq_cls", labels)

    def losses(self, model: torch.nn.Module, batch: Batch) -> dict[str, TermResult]:
        logits = self.logits(model, batch)
        hard = self.hard_loss(logits, batch)
        if not self.teaching(model):
            return {"seq_cls": hard}
        with torch.no_grad():  # the teacher read through the same seq_cls head and pooling
            target = self.logits(self.teacher, batch)
        # summed over rows like the hard loss, so the loop's per-row normalisation holds
        return {"seq_cls": self.mixed(hard, logits, target)}


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
