"""Token-level knowledge distillation: token_cls (`distill_token_cls`), masked-LM
(`distill_mlm`), causal-LM (`distill_clm`) and instruction-tuning (`distill_sft`) students
learn a frozen teacher carrying the same head (same tags / same vocabulary, same tokenizer).

Each is its objective with the teacher mixed in (objectives/distill.py): the loss is alpha x
the objective's own summed cross-entropy + (1 - alpha) x T^2 x KL(teacher || student) per
token, over exactly the positions that cross-entropy counts (tagged first sub-tokens, masked
tokens, every next token, response tokens) and summed as it is, so the loop's normalisation by
the objective's target count holds for both terms.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from llmtune.config.schema import RunConfig
from llmtune.models.family import Kind
from llmtune.objectives import clm, mlm, sft, token_cls
from llmtune.objectives.base import Batch, TermResult, sum_cross_entropy
from llmtune.objectives.classification import ClassificationConfig, check_classification
from llmtune.objectives.distill import Taught, TeacherConfig, check_teacher
from llmtune.objectives.entry import Context, text_build


@dataclass(frozen=True)
class DistillTokenClsConfig(ClassificationConfig, TeacherConfig):
    """A token_cls student taught by a frozen token_cls teacher with the same tags."""

    name: str = "distill_token_cls"  # registered objective name (objectives/registry.py)


@dataclass(frozen=True)
class DistillMLMConfig(mlm.MLMConfig, TeacherConfig):
    """A masked-LM student taught at its masked positions by a frozen masked-LM teacher."""

    name: str = "distill_mlm"  # registered objective name (objectives/registry.py)


@dataclass(frozen=True)
class DistillCLMConfig(clm.CLMConfig, TeacherConfig):
    """A causal-LM student taught at every next token by a frozen causal-LM teacher."""

    name: str = "distill_clm"  # registered objective name (objectives/registry.py)


@dataclass(frozen=True)
class DistillSFTConfig(sft.SFTConfig, TeacherConfig):
    """An instruction-tuned student taught at its response tokens by a frozen LM teacher."""

    name: str = "distill_sft"  # registered objective name (objectives/registry.py)


class DistilledTagger(Taught, token_cls.TokenClassification):
    name = "distill_token_cls"

    def __init__(self, ctx: Context, labels: list) -> None:
        super().__init__(ctx.info, labels, ctx.tokenizer, ctx.config.data)
        self.attach_teacher(ctx, "token_cls", labels)

    def losses(self, model: torch.nn.Module, batch: Batch) -> dict[str, TermResult]:
        logits = self.logits(model, batch)  # [B, T, n_labels]
        hard = self.hard_loss(logits, batch)
        if not self.teaching(model):
            return {"token_cls": hard}
        with torch.no_grad():
            target = self.logits(self.teacher, batch)
        tagged = batch["labels"] != -100  # the first sub-tokens the hard loss counts
        return {"token_cls": self.mixed(hard, logits[tagged], target[tagged])}


class DistilledMaskedLM(Taught, mlm.MaskedLM):
    name = "distill_mlm"

    def __init__(self, ctx: Context, labels: list) -> None:
        plain = mlm.make(ctx, labels)  # masking from objective.mask_prob & co, no NSP
        super().__init__(plain.info, plain.masking)
        self.attach_teacher(ctx, "mlm")

    def losses(self, model: torch.nn.Module, batch: Batch) -> dict[str, TermResult]:
        # the vocabulary projection runs only at masked positions, for both models
        logits, targets = self.masked_logits(model, model.backbone.features(batch), batch)
        hard = sum_cross_entropy(logits, targets)
        if not self.teaching(model):
            return {"mlm": hard}
        with torch.no_grad():  # the teacher reads the same masked input
            hidden = self.teacher.backbone.features(batch)
            target, _ = self.masked_logits(self.teacher, hidden, batch)
        return {"mlm": self.mixed(hard, logits, target)}


class DistilledCausalLM(Taught, clm.CausalLM):
    name = "distill_clm"

    def __init__(self, ctx: Context, labels: list) -> None:
        super().__init__(ctx.info.eos_id, ctx.config.objective.separate_documents)
        self.attach_teacher(ctx, "lm")

    def losses(self, model: torch.nn.Module, batch: Batch) -> dict[str, TermResult]:
        hidden = self.hidden(model, batch)
        hard = self.hard_loss(model, hidden, batch)  # clm's own (chunked, fused) loss
        if not self.teaching(model):
            return {"clm": hard}
        # clm counts every position but the last, so nothing is gathered: the KL needs the full
        # [B*(T-1), V] logits of both models, which the chunked loss never makes (objectives/
        # chunked_ce.py); distillation pays that memory for the teacher's distribution
        logits = model.heads["lm"](hidden[:, :-1]).flatten(0, 1)
        with torch.no_grad():
            target = self.teacher.heads["lm"](self.hidden(self.teacher, batch)[:, :-1])
        return {"clm": self.mixed(hard, logits, target.flatten(0, 1))}


class DistilledInstructions(Taught, sft.InstructionTuning):
    name = "distill_sft"

    def __init__(self, ctx: Context, labels: list) -> None:
        plain = sft.make(ctx, labels)
        super().__init__(plain.info, plain.tokenizer, plain.data, plain.template, plain.chat)
        self.attach_teacher(ctx, "lm")

    def losses(self, model: torch.nn.Module, batch: Batch) -> dict[str, TermResult]:
        # both models project to the vocabulary only at the response positions sft counts
        logits, targets = self.scored_logits(model, batch)
        hard = sum_cross_entropy(logits, targets)
        if not self.teaching(model):
            return {"sft": hard}
        with torch.no_grad():
            target, _ = self.scored_logits(self.teacher, batch)
        return {"sft": self.mixed(hard, logits, target)}


def check_tagger(config: RunConfig, kind: Kind | None) -> None:
    check_classification(config, kind)
    check_teacher(config, "token_cls")


def check_mlm(config: RunConfig, kind: Kind | None) -> None:
    mlm.check(config, kind)
    check_teacher(config, "mlm")


def check_lm(config: RunConfig, kind: Kind | None) -> None:
    check_teacher(config, "lm")


def check_sft(config: RunConfig, kind: Kind | None) -> None:
    sft.check_template(config, kind)
    check_teacher(config, "lm")


# each is its objective's entry (heads, kinds, columns, scoring, rows) with the teacher's keys
TOKEN_CLS = dataclasses.replace(
    token_cls.ENTRY,
    name="distill_token_cls",
    config=DistillTokenClsConfig,
    make=DistilledTagger,
    build=token_cls.tagger_build(DistilledTagger),
    check=check_tagger,
)
MLM = dataclasses.replace(
    mlm.MLM,
    name="distill_mlm",
    config=DistillMLMConfig,
    make=DistilledMaskedLM,
    build=text_build(DistilledMaskedLM),
    check=check_mlm,
)
CLM = dataclasses.replace(
    clm.ENTRY,
    name="distill_clm",
    config=DistillCLMConfig,
    make=DistilledCausalLM,
    build=text_build(DistilledCausalLM),
    check=check_lm,
    fused_vocab_loss=False,  # the KL needs the full logits (see DistilledCausalLM.losses)
)
SFT = dataclasses.replace(
    sft.ENTRY,
    name="distill_sft",
    config=DistillSFTConfig,
    make=DistilledInstructions,
    build=sft.instruction_build(DistilledInstructions),
    check=check_sft,
)
