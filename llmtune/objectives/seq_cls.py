"""Sequence classification (`seq_cls`): one label per text or text pair, from pooled features.

BERT pools [CLS] through its pooler; GPT takes the last real token (right padding is
invisible to a causal model, so padded and unpadded rows give the same features).
"""

from __future__ import annotations

import datasets
import torch
from tokenizers import Tokenizer
from torch import Tensor

from llmtune.config.schema import DataConfig
from llmtune.data import TokenizerInfo
from llmtune.data.labelled import Encoded, encode_texts, label_ids, padded_batch
from llmtune.objectives.base import Batch, TermResult, sum_cross_entropy

_ROW_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def trim_padding(batch: Batch) -> Batch:
    """Cut the columns past the batch's longest row: padding to the split's longest costs
    compute that short batches do not need (dynamic padding)."""
    width = int(batch["attention_mask"].sum(1).max())
    return {k: v[:, :width] if v.dim() == 2 else v for k, v in batch.items()}


def balanced_weights(targets: Tensor, n_labels: int) -> Tensor:
    """Inverse-frequency class weights N / (C * n_c), so rare classes weigh as much in total."""
    valid = targets[targets != -100]
    counts = torch.bincount(valid, minlength=n_labels).float().clamp(min=1)
    return valid.numel() / (n_labels * counts)


class SequenceClassification:
    name = "seq_cls"
    heads = ("seq_cls",)
    lm_term = "seq_cls"

    def __init__(
        self, info: TokenizerInfo, labels: list, tokenizer: Tokenizer, data: DataConfig
    ) -> None:
        self.info = info
        self.labels = labels
        self.tokenizer = tokenizer
        self.data = data
        self.class_weight: Tensor | None = None

    @staticmethod
    def columns(d: DataConfig) -> list[str]:
        return [d.text_column, *([d.text_pair_column] if d.text_pair_column else [])] + [
            d.label_column
        ]

    @staticmethod
    def label_values(split: datasets.Dataset, d: DataConfig) -> list:
        """Every label of a split (for the label vocabulary)."""
        return list(split[d.label_column])

    def encode(self, split: datasets.Dataset, seq_len: int, key: str = "train") -> Encoded:
        d = self.data
        pairs = split[d.text_pair_column] if d.text_pair_column else None
        encoded = encode_texts(
            self.tokenizer, [str(t) for t in split[d.text_column]], pairs, seq_len
        )
        if d.label_column in split.column_names:
            encoded.rows["labels"] = label_ids(split[d.label_column], self.labels, key)
        return encoded

    def make_examples(self, split: datasets.Dataset, seq_len: int, seed: int) -> Batch:
        return padded_batch(self.encode(split, seq_len), self.info.pad_id)

    def fit_class_weights(self, train: Batch) -> None:
        self.class_weight = balanced_weights(train["labels"], len(self.labels))

    def prepare(self, batch: Batch, generator: torch.Generator) -> Batch:
        return trim_padding(batch)

    def count(self, batch: Batch) -> dict[str, Tensor]:
        return {"seq_cls": torch.tensor(batch["labels"].numel())}

    def logits(self, model: torch.nn.Module, batch: Batch) -> Tensor:
        """[B, n_labels] for a prepared batch."""
        mask = batch["attention_mask"]
        if model.config.family == "bert":
            hidden = model(
                batch["input_ids"], token_type_ids=batch["token_type_ids"], attention_mask=mask
            )
            pooled = model.pool(hidden)
        else:
            hidden = model(batch["input_ids"])
            pooled = model.pool(hidden, mask.sum(1) - 1)  # [B,D]: the last real token
        return model.heads["seq_cls"](pooled)

    def losses(self, model: torch.nn.Module, batch: Batch) -> dict[str, TermResult]:
        weight = None if self.class_weight is None else self.class_weight.to(batch["labels"].device)
        logits = self.logits(model, batch)
        return {"seq_cls": sum_cross_entropy(logits, batch["labels"], weight, keep=True)}

    @torch.no_grad()
    def predictions(self, model: torch.nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
        return self.logits(model, batch).argmax(-1), batch["labels"]

    def input_tokens(self, batch: Batch) -> int:
        return int(batch["attention_mask"].sum())
