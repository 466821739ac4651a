"""What seq_cls and token_cls share: labels, padded examples, class weights, dynamic padding."""

from __future__ import annotations

import datasets
import torch
from tokenizers import Tokenizer
from torch import Tensor

from llmtune.config.schema import DataConfig
from llmtune.data import TokenizerInfo
from llmtune.data.labelled import Encoded, padded_batch
from llmtune.objectives.base import Batch


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


class ClassificationTask:
    """Base of the label-predicting tasks; subclasses add encode, logits and losses."""

    perplexity = False  # validation: exp(cross-entropy) of a classifier means nothing
    vocab_head = False
    packed = False

    def __init__(
        self, info: TokenizerInfo, labels: list, tokenizer: Tokenizer, data: DataConfig
    ) -> None:
        self.info = info
        self.labels = labels  # index = class id
        self.tokenizer = tokenizer
        self.data = data
        self.class_weight: Tensor | None = None  # objective.class_weights=balanced

    def encode(self, split: datasets.Dataset, seq_len: int, key: str = "train") -> Encoded:
        raise NotImplementedError

    def make_examples(self, split: datasets.Dataset, seq_len: int, seed: int) -> Batch:
        return padded_batch(self.encode(split, seq_len), self.info.pad_id)

    def fit_class_weights(self, train: Batch) -> None:
        # per-example labels are [N], per-token labels [N, T]: count them all alike
        self.class_weight = balanced_weights(train["labels"].flatten(), len(self.labels))

    def weight_on(self, device: torch.device) -> Tensor | None:
        return None if self.class_weight is None else self.class_weight.to(device)

    def prepare(self, batch: Batch, generator: torch.Generator | None) -> Batch:
        return trim_padding(batch)

    def input_tokens(self, batch: Batch) -> int:
        return int(batch["attention_mask"].sum())
