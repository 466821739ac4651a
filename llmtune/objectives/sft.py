"""Supervised fine-tuning (`sft`) of a decoder on instruction/response pairs or conversations.

Each example is template(instruction) + response + EOS; only response tokens and the EOS
are targets, so the model learns to answer, not to reproduce prompts. A chat model (one whose
tokenizer has a chat template) gets its rows laid out by that template instead, and learns its
assistant turns (closing markup included); `data.messages_column` feeds it whole conversations.
With data.packing=true several examples share a row, each attending only to itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import datasets
import torch
from tokenizers import Tokenizer
from torch import Tensor

from llmtune.config.schema import DataConfig, ObjectiveConfig, RunConfig, TokenizerConfig
from llmtune.data import TokenizerInfo
from llmtune.data.chat import as_messages, chat_model, chat_prompt, encode_chat, exchange, specials
from llmtune.data.examples import encoded_splits
from llmtune.data.labelled import (
    ROW_COLUMN,
    Encoded,
    encode_instructions,
    load_labelled,
    no_target,
    padded_batch,
)
from llmtune.data.row_packing import pack_encoded
from llmtune.errors import ConfigError
from llmtune.models.family import Kind
from llmtune.objectives.base import Batch, ObjectiveBase, TermResult, sum_cross_entropy
from llmtune.objectives.classification import trim_padding
from llmtune.objectives.entry import Built, Context, ObjectiveEntry, Scoring, build_rows

DEFAULT_TEMPLATE = "### Instruction:\n{instruction}\n\n### Response:\n"


@dataclass(frozen=True)
class PromptedConfig(ObjectiveConfig):
    """Objectives whose rows start with an instruction laid out by a prompt template (sft and
    the preference tunings after it); a model trained so answers prompts laid out so."""

    # the prompt before each response; {instruction} is filled from data.instruction_column
    prompt_template: str = DEFAULT_TEMPLATE


@dataclass(frozen=True)
class SFTConfig(PromptedConfig):
    """Instruction tuning: loss on response tokens (and EOS) after the filled template."""

    name: str = "sft"  # registered objective name (objectives/registry.py)


def check_template(config: RunConfig, kind: Kind | None) -> None:
    checked_template(config.objective.prompt_template)


def checked_template(template: str) -> str:
    """objective.prompt_template, checked to have the {instruction} slot (sft, reward, dpo, ppo)."""
    if "{instruction}" not in template:
        raise ConfigError(
            "objective.prompt_template must contain {instruction}, where the instruction text goes"
        )
    return template


def fill_template(template: str, instruction: object) -> str:
    """The template filled with one instruction: what a user's prompt becomes."""
    return template.replace("{instruction}", str(instruction))


def layout_prompt(template: str, chat: TokenizerConfig | None, instruction: object) -> str:
    """What a user's prompt becomes for a decoder: a chat model's user turn and assistant
    opening (its own template), else objective.prompt_template filled with it."""
    if chat is not None:
        return chat_prompt(chat, str(instruction))
    return fill_template(template, instruction)


class InstructionTuning(ObjectiveBase):
    name = "sft"
    heads = ("lm",)
    lm_term = "sft"
    perplexity = True
    vocab_head = True
    packed = False

    def __init__(
        self,
        info: TokenizerInfo,
        tokenizer: Tokenizer,
        data: DataConfig,
        template: str,
        chat: TokenizerConfig | None = None,
    ) -> None:
        self.info = info
        self.tokenizer = tokenizer
        self.data = data
        self.template = checked_template(template)
        # a chat model's template lays rows out as it was trained to read them
        self.chat = chat_model(chat)
        if getattr(data, "messages_column", "") and self.chat is None:
            raise ConfigError(
                "data.messages_column: the model has no chat template to lay conversations "
                "out with; set tokenizer.chat_template or use instruction/response columns"
            )

    @staticmethod
    def columns(d: DataConfig) -> list[str]:
        if getattr(d, "messages_column", ""):
            return [d.messages_column]
        return [d.instruction_column, d.response_column]

    def prompt(self, instruction: str) -> str:
        return layout_prompt(self.template, self.chat, instruction)

    def encode(self, split: datasets.Dataset, seq_len: int, key: str = "train") -> Encoded:
        if self.chat is not None:
            return self._encode_chat(split, seq_len)
        prompts = [self.prompt(i) for i in split[self.data.instruction_column]]
        responses = [str(r) for r in split[self.data.response_column]]
        return encode_instructions(self.tokenizer, prompts, responses, self.info.eos_id, seq_len)

    def conversations(self, split: datasets.Dataset) -> list[list[dict]]:
        """Each row as messages: its messages column, or a user turn and an assistant turn."""
        rows = split[ROW_COLUMN] if ROW_COLUMN in split.column_names else range(1, len(split) + 1)
        if getattr(self.data, "messages_column", ""):
            return [as_messages(m, r) for m, r in zip(split[self.data.messages_column], rows)]
        pairs = zip(split[self.data.instruction_column], split[self.data.response_column])
        return [exchange(i, r) for i, r in pairs]

    def _encode_chat(self, split: datasets.Dataset, seq_len: int) -> Encoded:
        chat = self.chat
        ids, targets, overlong = encode_chat(
            self.tokenizer, chat.chat_template, self.conversations(split), specials(chat), seq_len
        )
        keep = [i for i, t in enumerate(targets) if not no_target(t)]
        rows = {"input_ids": [ids[i] for i in keep], "labels": [targets[i] for i in keep]}
        return Encoded(rows, overlong, len(ids) - len(keep))

    def batch(self, encoded: Encoded) -> Batch:
        return padded_batch(encoded, self.info.pad_id)

    def prepare(self, batch: Batch, generator: torch.Generator) -> Batch:
        return trim_padding(batch)

    def count(self, batch: Batch) -> dict[str, Tensor]:
        return {"sft": (batch["labels"][:, 1:] != -100).sum()}

    def scored_logits(self, model: torch.nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
        """([n_targets, V] logits, [n_targets] targets) at the positions predicting a response
        token, in row order."""
        # right padding is never attended; packed rows' doc_ids keep examples apart
        hidden = model(batch["input_ids"], doc_ids=batch.get("doc_ids"))  # [B,T,D]
        targets = batch["labels"][:, 1:]  # position t predicts token t+1
        scored = targets != -100
        # project to the vocabulary only where a response token is predicted
        return model.heads["lm"](hidden[:, :-1][scored]), targets[scored]

    def losses(self, model: torch.nn.Module, batch: Batch) -> dict[str, TermResult]:
        return {"sft": sum_cross_entropy(*self.scored_logits(model, batch))}

    def input_tokens(self, batch: Batch) -> int:
        return int(batch["attention_mask"].sum())


def make(ctx: Context, labels: list) -> InstructionTuning:
    data = ctx.config.data
    template = ctx.config.objective.prompt_template
    return InstructionTuning(ctx.info, ctx.tokenizer, data, template, ctx.config.tokenizer)


def instruction_build(
    make_task: Callable[[Context, list], InstructionTuning],
) -> Callable[[Context], Built]:
    """The `build` of an instruction-tuning task: sft's rows (packed with data.packing=true),
    the task `make_task` gives (distill_sft's student reads the same rows as sft)."""
    return lambda ctx: _build(ctx, make_task)


def _build(ctx: Context, make: Callable[[Context, list], InstructionTuning]) -> Built:
    config = ctx.config
    raw = load_labelled(config.data, InstructionTuning.columns(config.data), config.seed)
    if not getattr(config.data, "packing", False):
        return build_rows(ctx, make, raw, [])
    task = make(ctx, [])
    examples = {}
    for split, encoded in encoded_splits(raw, task.encode, config, ctx.console).items():
        packed, stats = pack_encoded(encoded, config.model.max_seq_len, config.seed)
        ctx.console.print(stats.describe(split))
        examples[split] = task.batch(packed)
    return Built(task, examples)


build = instruction_build(make)

ENTRY = ObjectiveEntry(
    name="sft",
    config=SFTConfig,
    kinds=(Kind.DECODER,),
    labelled=True,
    heads=lambda config: ("lm",),
    make=make,
    build=build,
    scoring=Scoring.INSTRUCTIONS,
    check=check_template,
    columns=lambda cfg, data: InstructionTuning.columns(data),
    target_column=lambda data: data.response_column,
    packing=True,
)
