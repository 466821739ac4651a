"""Sequence-to-sequence fine-tuning of an encoder-decoder on (source, target) text pairs:
summarisation, translation, question answering, any text-to-text task.

The encoder reads the source + EOS (cut to model.max_seq_len); the decoder is taught the
target + EOS (cut to objective.target_max_tokens), every target token a prediction.
"""

from __future__ import annotations

from dataclasses import dataclass

import datasets
import torch
from tokenizers import Tokenizer
from torch import Tensor

from llmtune.config.schema import ObjectiveConfig, RunConfig
from llmtune.data.labelled import IGNORE, Encoded, load_labelled, pad_rows, token_ids
from llmtune.errors import ConfigError
from llmtune.models.family import Kind
from llmtune.objectives.base import Batch, ObjectiveBase, TermResult, sum_cross_entropy
from llmtune.objectives.entry import Built, Context, ObjectiveEntry, Scoring, build_rows


@dataclass(frozen=True)
class Seq2SeqConfig(ObjectiveConfig):
    """Text-to-text fine-tuning of an encoder-decoder on (source, target) columns."""

    name: str = "seq2seq"  # registered objective name (objectives/registry.py)
    source_column: str = "source"  # the encoder's text
    target_column: str = "target"  # the text the decoder learns to write
    source_prefix: str = ""  # put before every source, as T5's task prefixes ("summarize: ")
    target_max_tokens: int = 128  # targets are cut to this many tokens (EOS included)


def shift_right(targets: Tensor, start_id: int) -> Tensor:
    """Decoder inputs [B,T]: the start token, then targets [B,T] without their last column
    (ignored targets, -100, become the start id: they are never predicted from)."""
    shifted = torch.cat([torch.full_like(targets[:, :1], start_id), targets[:, :-1]], dim=1)
    return shifted.masked_fill(shifted == -100, start_id)


def with_eos(ids: list[int], eos_id: int, max_len: int) -> list[int]:
    """ids cut to max_len - 1, then EOS: a cut text still ends where the model expects."""
    return ids[: max_len - 1] + [eos_id]


class Seq2Seq(ObjectiveBase):
    name = "seq2seq"
    heads = ("lm",)
    lm_term = "seq2seq"
    perplexity = True
    vocab_head = True
    packed = False

    def __init__(
        self,
        tokenizer: Tokenizer,
        ids: tuple[int, int],  # (pad = decoder start, eos), as T5
        columns: tuple[str, str],  # (source column, target column)
        target_max_tokens: int,
        source_prefix: str = "",  # T5's task prefix, e.g. "summarize: "
    ) -> None:
        self.tokenizer = tokenizer
        self.pad_id, self.eos_id = ids
        self.source_column, self.target_column = columns
        self.target_max_tokens = target_max_tokens
        self.source_prefix = source_prefix

    def source_ids(self, sources: list, seq_len: int) -> tuple[list[list[int]], dict[int, int]]:
        """Encoder rows (prefix + source + EOS, cut to seq_len) and {index: full length} of
        the sources that were cut."""
        rows, overlong = [], {}
        for i, ids in enumerate(
            token_ids(self.tokenizer, [self.source_prefix + str(s) for s in sources])
        ):
            if len(ids) + 1 > seq_len:
                overlong[i] = len(ids) + 1
            rows.append(with_eos(ids, self.eos_id, seq_len))
        return rows, overlong

    def encode(self, split: datasets.Dataset, seq_len: int, key: str = "train") -> Encoded:
        sources, overlong = self.source_ids(split[self.source_column], seq_len)
        targets = [
            with_eos(ids, self.eos_id, self.target_max_tokens)
            for ids in token_ids(self.tokenizer, [str(t) for t in split[self.target_column]])
        ]
        return Encoded({"input_ids": sources, "labels": targets}, overlong)

    def batch(self, encoded: Encoded) -> Batch:
        """Right-padded sources, targets (-100 after each) and the decoder's inputs."""
        sources, targets = encoded.rows["input_ids"], encoded.rows["labels"]
        width = max((len(r) for r in sources), default=1)
        target_width = max((len(r) for r in targets), default=1)
        labels = pad_rows(targets, target_width, IGNORE)
        return {
            "input_ids": pad_rows(sources, width, self.pad_id),
            "attention_mask": pad_rows([[1] * len(r) for r in sources], width, 0),
            "labels": labels,
            "decoder_input_ids": shift_right(labels, self.pad_id),
        }

    def prepare(self, batch: Batch, generator: torch.Generator) -> Batch:
        """Cut source and target columns past this batch's longest row (dynamic padding)."""
        width = int(batch["attention_mask"].sum(1).max())
        target_width = int((batch["labels"] != IGNORE).sum(1).max())
        return {
            "input_ids": batch["input_ids"][:, :width],
            "attention_mask": batch["attention_mask"][:, :width],
            "labels": batch["labels"][:, :target_width],
            "decoder_input_ids": batch["decoder_input_ids"][:, :target_width],
        }

    def count(self, batch: Batch) -> dict[str, Tensor]:
        return {"seq2seq": (batch["labels"] != IGNORE).sum()}

    def losses(self, model: torch.nn.Module, batch: Batch) -> dict[str, TermResult]:
        hidden = model(
            batch["input_ids"],
            attention_mask=batch["attention_mask"],
            decoder_input_ids=batch["decoder_input_ids"],
        )  # [B, T, D]; the causal decoder never reads the padding after a target
        labels = batch["labels"]
        scored = labels != IGNORE
        logits = model.heads["lm"](hidden[scored])  # [n_targets, V]
        return {"seq2seq": sum_cross_entropy(logits, labels[scored])}

    def input_tokens(self, batch: Batch) -> int:
        return int(batch["attention_mask"].sum() + (batch["labels"] != IGNORE).sum())


def columns(cfg: ObjectiveConfig, data: object) -> list[str]:
    return [cfg.source_column, cfg.target_column]


def check(config: RunConfig, kind: Kind | None) -> None:
    o = config.objective
    if o.target_max_tokens < 2:
        raise ConfigError(f"objective.target_max_tokens={o.target_max_tokens}: must be >= 2 (EOS)")
    if not o.source_column or not o.target_column or o.source_column == o.target_column:
        raise ConfigError(
            "objective.source_column and objective.target_column must name two different columns"
        )


def make(ctx: Context, labels: list) -> Seq2Seq:
    o = ctx.config.objective
    return Seq2Seq(
        ctx.tokenizer,
        (ctx.info.pad_id, ctx.info.eos_id),
        (o.source_column, o.target_column),
        o.target_max_tokens,
        o.source_prefix,
    )


def build(ctx: Context) -> Built:
    cfg = ctx.config
    raw = load_labelled(cfg.data, columns(cfg.objective, cfg.data), cfg.seed)
    return build_rows(ctx, make, raw, [])


ENTRY = ObjectiveEntry(
    name="seq2seq",
    config=Seq2SeqConfig,
    kinds=(Kind.ENCODER_DECODER,),
    labelled=True,
    heads=lambda config: ("lm",),
    make=make,
    build=build,
    scoring=Scoring.GENERATION,
    check=check,
    columns=columns,
)
