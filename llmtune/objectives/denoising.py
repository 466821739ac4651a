"""BART-style denoising pretraining of an encoder-decoder: each block of text is noised anew
every step (sentences shuffled, 30% of tokens removed in Poisson(3) spans, one mask token
per span) and the decoder rebuilds the original block."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer
from torch import Tensor

from llmtune.config.schema import ObjectiveConfig, RunConfig
from llmtune.data import pack_documents
from llmtune.data.denoising import MASK_RATIO, bart_noise
from llmtune.data.labelled import pad_rows
from llmtune.errors import ConfigError
from llmtune.models.family import Kind
from llmtune.objectives.base import Batch, ObjectiveBase, TermResult, sum_cross_entropy
from llmtune.objectives.entry import Context, ObjectiveEntry, Scoring, text_build
from llmtune.objectives.seq2seq import shift_right
from llmtune.objectives.span_corruption import sentinels_of

SENTENCE_ENDS = (".", "!", "?")


@dataclass(frozen=True)
class DenoisingConfig(ObjectiveConfig):
    """BART's pretraining: sentence permutation plus text infilling; the decoder rebuilds."""

    name: str = "denoising"  # registered objective name (objectives/registry.py)
    mask_ratio: float = MASK_RATIO  # share of tokens removed in Poisson(3)-long spans


class Denoising(ObjectiveBase):
    name = "denoising"
    heads = ("lm",)
    lm_term = "denoising"
    perplexity = True
    vocab_head = True
    packed = True

    def __init__(
        self,
        ids: tuple[int, int, int],  # (pad = decoder start, eos, mask)
        sentence_end_ids: Collection[int],
        mask_ratio: float = MASK_RATIO,
    ) -> None:
        self.pad_id, self.eos_id, self.mask_id = ids
        self.sentence_end_ids = frozenset(sentence_end_ids)
        self.mask_ratio = mask_ratio

    def make_examples(self, token_ids, seq_len: int, seed: int) -> Batch:
        """Blocks of seq_len - 1 tokens of the stream: with EOS a target is seq_len long."""
        return pack_documents(token_ids, seq_len - 1, self.eos_id)

    def prepare(self, batch: Batch, generator: torch.Generator) -> Batch:
        """Noised encoder inputs (right-padded, never longer than the target) and targets."""
        rows, targets = [], []
        for block in batch["input_ids"]:
            noised, original = bart_noise(
                block, self.mask_id, self.sentence_end_ids, generator, self.mask_ratio
            )
            rows.append(noised[: len(block)].tolist() + [self.eos_id])
            targets.append(original.tolist() + [self.eos_id])
        width = max(len(r) for r in rows)
        labels = torch.tensor(targets)
        return {
            "input_ids": pad_rows(rows, width, self.pad_id),
            "attention_mask": pad_rows([[1] * len(r) for r in rows], width, 0),
            "decoder_input_ids": shift_right(labels, self.pad_id),
            "labels": labels,
        }

    def count(self, batch: Batch) -> dict[str, Tensor]:
        return {"denoising": torch.tensor(batch["labels"].numel())}

    def losses(self, model: torch.nn.Module, batch: Batch) -> dict[str, TermResult]:
        hidden = model(
            batch["input_ids"],
            attention_mask=batch["attention_mask"],
            decoder_input_ids=batch["decoder_input_ids"],
        )
        logits = model.heads["lm"](hidden)  # [B, T, V]
        return {"denoising": sum_cross_entropy(logits.flatten(0, 1), batch["labels"].flatten())}

    def input_tokens(self, batch: Batch) -> int:
        return int(batch["attention_mask"].sum()) + batch["labels"].numel()


def sentence_end_ids(tokenizer: Tokenizer) -> list[int]:
    """Tokens that end a sentence (their text ends in . ! or ?): where sentences are cut."""
    return [i for t, i in tokenizer.get_vocab().items() if t.rstrip().endswith(SENTENCE_ENDS)]


def check(config: RunConfig, kind: Kind | None) -> None:
    ratio = config.objective.mask_ratio
    if not 0 <= ratio < 1:
        raise ConfigError(f"objective.mask_ratio={ratio}: must be in [0, 1)")


def make(ctx: Context, labels: list) -> Denoising:
    """A T5 vocabulary has no <mask>: a masked span is <extra_id_0> (a <mask> token wins)."""
    mask = ctx.tokenizer.token_to_id("<mask>")
    if mask is None:
        mask = sentinels_of(ctx.tokenizer, 1)[0]
    ids = (ctx.info.pad_id, ctx.info.eos_id, mask)
    return Denoising(ids, sentence_end_ids(ctx.tokenizer), ctx.config.objective.mask_ratio)


ENTRY = ObjectiveEntry(
    name="denoising",
    config=DenoisingConfig,
    kinds=(Kind.ENCODER_DECODER,),
    labelled=False,
    heads=lambda config: ("lm",),
    make=make,
    build=text_build(make),
    scoring=Scoring.LANGUAGE_MODEL,
    check=check,
    vocab_share=lambda cfg, seq_len: 1.0,  # the decoder rebuilds every token of the block
)
