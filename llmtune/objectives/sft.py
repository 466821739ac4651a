"""Supervised fine-tuning (`sft`) of a GPT on instruction/response pairs.

Each example is template(instruction) + response + EOS; only response tokens and the EOS
are targets, so the model learns to answer, not to reproduce prompts.
"""

from __future__ import annotations

import datasets
import torch
from tokenizers import Tokenizer
from torch import Tensor

from llmtune.config.schema import DataConfig
from llmtune.data import TokenizerInfo
from llmtune.data.labelled import Encoded, encode_instructions, padded_batch
from llmtune.errors import ConfigError
from llmtune.objectives.base import Batch, TermResult, sum_cross_entropy
from llmtune.objectives.classification import trim_padding


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


class InstructionTuning:
    name = "sft"
    heads = ("lm",)
    lm_term = "sft"
    perplexity = True
    vocab_head = True
    packed = False

    def __init__(
        self, info: TokenizerInfo, tokenizer: Tokenizer, data: DataConfig, template: str
    ) -> None:
        self.info = info
        self.tokenizer = tokenizer
        self.data = data
        self.template = checked_template(template)

    @staticmethod
    def columns(d: DataConfig) -> list[str]:
        return [d.instruction_column, d.response_column]

    @staticmethod
    def label_values(split: datasets.Dataset, d: DataConfig) -> list:
        return []  # generation: no label vocabulary

    def prompt(self, instruction: str) -> str:
        """The template filled with one instruction (what a user's prompt becomes)."""
        return fill_template(self.template, instruction)

    def encode(self, split: datasets.Dataset, seq_len: int, key: str = "train") -> Encoded:
        prompts = [self.prompt(i) for i in split[self.data.instruction_column]]
        responses = [str(r) for r in split[self.data.response_column]]
        return encode_instructions(self.tokenizer, prompts, responses, self.info.eos_id, seq_len)

    def make_examples(self, split: datasets.Dataset, seq_len: int, seed: int) -> Batch:
        return padded_batch(self.encode(split, seq_len), self.info.pad_id)

    def prepare(self, batch: Batch, generator: torch.Generator) -> Batch:
        return trim_padding(batch)

    def count(self, batch: Batch) -> dict[str, Tensor]:
        return {"sft": (batch["labels"][:, 1:] != -100).sum()}

    def losses(self, model: torch.nn.Module, batch: Batch) -> dict[str, TermResult]:
        hidden = model(batch["input_ids"])  # [B,T,D]; right padding is never attended
        targets = batch["labels"][:, 1:]  # position t predicts token t+1
        scored = targets != -100
        # project to the vocabulary only where a response token is predicted
        logits = model.heads["lm"](hidden[:, :-1][scored])  # [n_targets, V]
        return {"sft": sum_cross_entropy(logits, targets[scored])}

    def input_tokens(self, batch: Batch) -> int:
        return int(batch["attention_mask"].sum())
