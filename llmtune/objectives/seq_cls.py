"""Sequence classification (`seq_cls`): one label per text or text pair, from pooled features.

BERT pools [CLS] through its pooler; GPT takes the last real token (right padding is
invisible to a causal model, so padded and unpadded rows give the same features).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import datasets
import torch
from torch import Tensor

from llmtune.config.schema import DataConfig
from llmtune.data.labelled import Encoded, encode_texts, label_ids, scalar_labels
from llmtune.objectives.base import Batch, TermResult, pooled_features, sum_cross_entropy
from llmtune.objectives.classification import (
    ClassificationConfig,
    ClassificationTask,
    check_classification,
    labelled_build,
)
from llmtune.objectives.entry import ANY_KIND, Built, Context, ObjectiveEntry, Scoring


@dataclass(frozen=True)
class SeqClsConfig(ClassificationConfig):
    """One label per text (or text pair), from pooled features."""

    name: str = "seq_cls"  # registered objective name (objectives/registry.py)


class SequenceClassification(ClassificationTask):
    name = "seq_cls"
    heads = ("seq_cls",)
    lm_term = "seq_cls"

    @staticmethod
    def columns(d: DataConfig) -> list[str]:
        return [d.text_column, *([d.text_pair_column] if d.text_pair_column else [])] + [
            d.label_column
        ]

    @staticmethod
    def label_values(split: datasets.Dataset, d: DataConfig) -> list:
        """Every label of a split (for the label vocabulary)."""
        return list(scalar_labels(split, d, "train", d.label_column))

    def encode(self, split: datasets.Dataset, seq_len: int, key: str = "train") -> Encoded:
        d = self.data
        pairs = split[d.text_pair_column] if d.text_pair_column else None
        encoded = encode_texts(
            self.tokenizer, [str(t) for t in split[d.text_column]], pairs, seq_len
        )
        if d.label_column in split.column_names:
            values = scalar_labels(split, d, key, d.label_column)
            encoded.rows["labels"] = label_ids(values, self.labels, key)
        return encoded

    def count(self, batch: Batch) -> dict[str, Tensor]:
        return {"seq_cls": torch.tensor(batch["labels"].numel())}

    def logits(self, model: torch.nn.Module, batch: Batch) -> Tensor:
        """[B, n_labels] for a prepared batch."""
        return model.heads["seq_cls"](pooled_features(model, batch))

    def hard_loss(self, logits: Tensor, batch: Batch) -> TermResult:
        """Cross-entropy (summed over rows, class-weighted) of `logits` against the labels."""
        weight = self.weight_on(logits.device)
        return sum_cross_entropy(logits, batch["labels"], weight, keep=True)

    def losses(self, model: torch.nn.Module, batch: Batch) -> dict[str, TermResult]:
        return {"seq_cls": self.hard_loss(self.logits(model, batch), batch)}

    @torch.no_grad()
    def predictions(self, model: torch.nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
        return self.logits(model, batch).argmax(-1), batch["labels"]


def make(ctx: Context, labels: list) -> SequenceClassification:
    return SequenceClassification(ctx.info, labels, ctx.tokenizer, ctx.config.data)


def classifier_build(
    make_task: Callable[[Context, list], SequenceClassification],
) -> Callable[[Context], Built]:
    """The `build` of a one-label-per-row task: seq_cls's rows and labels."""
    return labelled_build(SequenceClassification, lambda d: d.label_column, make_task)


ENTRY = ObjectiveEntry(
    name="seq_cls",
    config=SeqClsConfig,
    kinds=ANY_KIND,
    labelled=True,
    heads=lambda config: ("seq_cls",),
    make=make,
    build=classifier_build(make),
    scoring=Scoring.CLASSIFICATION,
    check=check_classification,
    columns=lambda cfg, data: SequenceClassification.columns(data),
    target_column=lambda data: data.label_column,
)
