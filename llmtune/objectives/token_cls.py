"""Token classification (`token_cls`): word-level tags (BIO or any set) on sub-tokens.

The first sub-token of each word carries the word's tag; the others are ignored, so a
word split into many pieces counts once in the loss and in the accuracy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import datasets
import torch
from torch import Tensor

from llmtune.config.schema import DataConfig
from llmtune.data.labelled import Encoded, as_words, encode_tagged, label_ids, row_of
from llmtune.errors import DataError
from llmtune.objectives.base import Batch, TermResult, hidden_states, sum_cross_entropy
from llmtune.objectives.classification import (
    ClassificationConfig,
    ClassificationTask,
    check_classification,
    labelled_build,
)
from llmtune.objectives.entry import ANY_KIND, Built, Context, ObjectiveEntry, Scoring
from llmtune.objectives.metrics import entity_report


@dataclass(frozen=True)
class TokenClsConfig(ClassificationConfig):
    """Word-level tags (BIO or any tag set) on the first sub-token of each word."""

    name: str = "token_cls"  # registered objective name (objectives/registry.py)


def words_and_tags(split: datasets.Dataset, d: DataConfig, key: str) -> tuple[list, list]:
    """Word lists and tag lists of a split; an unlabelled split gets placeholder tags."""
    words = [as_words(w) for w in split[d.tokens_column]]
    if d.tags_column not in split.column_names:
        return words, [[0] * len(w) for w in words]  # predictions only
    tags = [as_words(t) for t in split[d.tags_column]]
    for i, (w, t) in enumerate(zip(words, tags)):
        if len(w) != len(t):
            raise DataError(
                f"data.{key}: {row_of(d, key, split, i)} has {len(w)} tokens but {len(t)} tags; "
                "data.tokens_column and data.tags_column need one tag per word"
            )
        if any(isinstance(tag, list | dict) for tag in t):
            raise DataError(
                f"data.{key}: {row_of(d, key, split, i)} has a nested tag in "
                f"'{d.tags_column}'; each word needs one tag (a string or a number)"
            )
    return words, tags


class TokenClassification(ClassificationTask):
    name = "token_cls"
    heads = ("token_cls",)
    lm_term = "token_cls"

    @staticmethod
    def columns(d: DataConfig) -> list[str]:
        return [d.tokens_column, d.tags_column]

    @staticmethod
    def label_values(split: datasets.Dataset, d: DataConfig) -> list:
        """Every tag of a split (for the label vocabulary)."""
        return [t for row in words_and_tags(split, d, "train")[1] for t in row]

    def encode(self, split: datasets.Dataset, seq_len: int, key: str = "train") -> Encoded:
        words, tags = words_and_tags(split, self.data, key)
        if self.data.tags_column not in split.column_names:  # to predict: tag 0 marks words
            return encode_tagged(self.tokenizer, words, tags, seq_len)
        flat = label_ids((t for row in tags for t in row), self.labels, key)
        tag_ids, start = [], 0
        for row in tags:  # un-flatten the ids back into rows
            tag_ids.append(flat[start : start + len(row)])
            start += len(row)
        return encode_tagged(self.tokenizer, words, tag_ids, seq_len)

    def count(self, batch: Batch) -> dict[str, Tensor]:
        return {"token_cls": (batch["labels"] != -100).sum()}

    def logits(self, model: torch.nn.Module, batch: Batch) -> Tensor:
        """[B, T, n_labels] for a prepared batch."""
        return model.heads["token_cls"](hidden_states(model, batch))

    def hard_loss(self, logits: Tensor, batch: Batch) -> TermResult:
        """Cross-entropy (summed over tagged sub-tokens, class-weighted) of [B, T, n_labels]
        `logits` against the tags."""
        labels = batch["labels"]
        weight = self.weight_on(labels.device)
        term = sum_cross_entropy(logits.flatten(0, 1), labels.flatten(), weight, keep=True)
        term.row_sizes = (labels != -100).sum(1)  # words per sentence, in row order
        return term

    def losses(self, model: torch.nn.Module, batch: Batch) -> dict[str, TermResult]:
        return {"token_cls": self.hard_loss(self.logits(model, batch), batch)}

    @torch.no_grad()
    def predictions(self, model: torch.nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
        """First-sub-token predictions and tags, flattened; word order is kept."""
        labels = batch["labels"]
        predicted = self.logits(model, batch).argmax(-1)
        return predicted[labels != -100], labels[labels != -100]

    def row_metrics(self, rows: list[tuple[list[int], list[int]]]) -> dict[str, float]:
        """Entity-level precision/recall/F1 over sentences of (predicted, target) tag ids, by
        the same seqeval-style code as `llmtune evaluate`; per type as entity_f1/<type>."""
        names = [str(label) for label in self.labels]
        true = [[names[t] for t in target] for _, target in rows]
        predicted = [[names[p] for p in pred] for pred, _ in rows]
        report = entity_report(true, predicted)
        out = {k: report[k] for k in ("entity_precision", "entity_recall", "entity_f1")}
        for type_, scores in report["per_type"].items():
            out[f"entity_f1/{type_}"] = scores["f1"]
        return out


def make(ctx: Context, labels: list) -> TokenClassification:
    return TokenClassification(ctx.info, labels, ctx.tokenizer, ctx.config.data)


def tagger_build(
    make_task: Callable[[Context, list], TokenClassification],
) -> Callable[[Context], Built]:
    """The `build` of a word-tagging task: token_cls's rows and tags."""
    return labelled_build(TokenClassification, lambda d: d.tags_column, make_task)


build = tagger_build(make)


ENTRY = ObjectiveEntry(
    name="token_cls",
    config=TokenClsConfig,
    kinds=ANY_KIND,
    labelled=True,
    heads=lambda config: ("token_cls",),
    make=make,
    build=build,
    scoring=Scoring.TAGGING,
    check=check_classification,
    columns=lambda cfg, data: TokenClassification.columns(data),
    target_column=lambda data: data.tags_column,
)
