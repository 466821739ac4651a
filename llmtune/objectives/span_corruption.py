"""T5 span corruption pretraining: the token stream is cut into raw blocks sized so that a
corrupted block fills model.max_seq_len exactly; each step draws new spans (as MLM draws
new masks) and the decoder predicts the dropped spans behind their sentinels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer
from torch import Tensor

from llmtune.config.schema import ObjectiveConfig, RunConfig
from llmtune.data import pack_documents
from llmtune.data.span_corruption import (
    MEAN_SPAN_LENGTH,
    NOISE_DENSITY,
    corrupt_spans,
    noise_counts,
    span_corruption_lengths,
)
from llmtune.errors import ConfigError, DataError
from llmtune.models.family import Kind
from llmtune.objectives.base import Batch, ObjectiveBase, TermResult, sum_cross_entropy
from llmtune.objectives.entry import Context, ObjectiveEntry, Scoring, text_build
from llmtune.objectives.seq2seq import shift_right


@dataclass(frozen=True)
class SpanCorruptionConfig(ObjectiveConfig):
    """T5's pretraining: spans of the input replaced by sentinels, the decoder predicts them."""

    name: str = "span_corruption"  # registered objective name (objectives/registry.py)
    noise_density: float = NOISE_DENSITY  # share of the raw tokens dropped into spans
    mean_span_length: float = MEAN_SPAN_LENGTH  # mean length of a dropped span


class SpanCorruption(ObjectiveBase):
    name = "span_corruption"
    heads = ("lm",)
    lm_term = "span_corruption"
    perplexity = True  # of the targets: sentinels and dropped spans
    vocab_head = True
    packed = True

    def __init__(
        self,
        eos_id: int,
        start_id: int,
        sentinels: Sequence[int],
        noise_density: float = 0.15,
        mean_span: float = 3.0,
    ) -> None:
        self.eos_id, self.start_id = eos_id, start_id
        self.sentinels = list(sentinels)
        self.noise_density, self.mean_span = noise_density, mean_span

    def make_examples(self, token_ids, seq_len: int, seed: int) -> Batch:
        """Raw blocks [N, L] of the stream (documents joined by EOS), L from T5's arithmetic."""
        raw_len, _ = span_corruption_lengths(seq_len, self.noise_density, self.mean_span)
        return pack_documents(token_ids, raw_len, self.eos_id)

    def prepare(self, batch: Batch, generator: torch.Generator) -> Batch:
        """Corrupt every raw block anew: encoder inputs [B, max_seq_len], labels [B, T]."""
        pairs = [
            corrupt_spans(
                row, self.sentinels, self.eos_id, generator, self.noise_density, self.mean_span
            )
            for row in batch["input_ids"]
        ]
        inputs = torch.stack([p[0] for p in pairs])
        labels = torch.stack([p[1] for p in pairs])
        return {
            "input_ids": inputs,
            "decoder_input_ids": shift_right(labels, self.start_id),
            "labels": labels,
        }

    def count(self, batch: Batch) -> dict[str, Tensor]:
        return {"span_corruption": torch.tensor(batch["labels"].numel())}

    def losses(self, model: torch.nn.Module, batch: Batch) -> dict[str, TermResult]:
        # packed blocks have no padding: no attention mask
        hidden = model(batch["input_ids"], decoder_input_ids=batch["decoder_input_ids"])
        logits = model.heads["lm"](hidden)  # [B, T, V]: every target position is scored
        return {
            "span_corruption": sum_cross_entropy(logits.flatten(0, 1), batch["labels"].flatten())
        }

    def input_tokens(self, batch: Batch) -> int:
        return batch["input_ids"].numel() + batch["labels"].numel()


def sentinels_of(tokenizer: Tokenizer, n_needed: int) -> list[int]:
    """Ids of <extra_id_0>, <extra_id_1>, ... (as many as a row can have spans), by name."""
    ids = [tokenizer.token_to_id(f"<extra_id_{i}>") for i in range(n_needed)]
    if None in ids:
        raise DataError(
            f"the tokenizer has no <extra_id_{ids.index(None)}> sentinel, which span "
            f"corruption needs ({n_needed} per row); train one with tokenizer=unigram"
        )
    return ids


def check(config: RunConfig, kind: Kind | None) -> None:
    o = config.objective
    if not 0 < o.noise_density < 1:
        raise ConfigError(f"objective.noise_density={o.noise_density}: must be in (0, 1)")
    if o.mean_span_length < 1:
        raise ConfigError(f"objective.mean_span_length={o.mean_span_length}: must be >= 1")


def make(ctx: Context, labels: list) -> SpanCorruption:
    o, seq_len = ctx.config.objective, ctx.config.model.max_seq_len
    raw_len, _ = span_corruption_lengths(seq_len, o.noise_density, o.mean_span_length)
    _, n_spans = noise_counts(raw_len, o.noise_density, o.mean_span_length)
    sentinels = sentinels_of(ctx.tokenizer, n_spans)
    return SpanCorruption(
        ctx.info.eos_id, ctx.info.pad_id, sentinels, o.noise_density, o.mean_span_length
    )


def _vocab_share(cfg: ObjectiveConfig, seq_len: int) -> float:
    """Targets per encoder position: T5's arithmetic (512 inputs -> 114 targets)."""
    return span_corruption_lengths(seq_len, cfg.noise_density, cfg.mean_span_length)[1] / seq_len


ENTRY = ObjectiveEntry(
    name="span_corruption",
    config=SpanCorruptionConfig,
    kinds=(Kind.ENCODER_DECODER,),
    labelled=False,
    heads=lambda config: ("lm",),
    make=make,
    build=text_build(make),
    scoring=Scoring.LANGUAGE_MODEL,
    check=check,
    vocab_share=_vocab_share,
)
