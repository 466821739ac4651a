"""What seq_cls and token_cls share: their config (class weights), labels, padded examples,
class weights, dynamic padding, and how their examples are built."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import datasets
import torch
from tokenizers import Tokenizer
from torch import Tensor

from llmtune.config.schema import DataConfig, ObjectiveConfig, RunConfig
from llmtune.data import TokenizerInfo
from llmtune.data.labelled import Encoded, class_names, load_labelled, padded_batch
from llmtune.errors import ConfigError
from llmtune.models.family import Kind
from llmtune.objectives.base import Batch, ObjectiveBase
from llmtune.objectives.entry import Built, Context, build_rows

CLASS_WEIGHTS = ("none", "balanced")


@dataclass(frozen=True)
class ClassificationConfig(ObjectiveConfig):
    """A classifier head trained with cross-entropy on labelled rows."""

    class_weights: str = "none"  # none | balanced (inverse label frequency)


def check_classification(config: RunConfig, kind: Kind | None) -> None:
    weights = config.objective.class_weights
    if weights not in CLASS_WEIGHTS:
        raise ConfigError(
            f"objective.class_weights={weights!r}: expected one of {', '.join(CLASS_WEIGHTS)}"
        )


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


class ClassificationTask(ObjectiveBase):
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

    def batch(self, encoded: Encoded) -> Batch:
        return padded_batch(encoded, self.info.pad_id)

    def weight_on(self, device: torch.device) -> Tensor | None:
        return None if self.class_weight is None else self.class_weight.to(device)

    def prepare(self, batch: Batch, generator: torch.Generator | None) -> Batch:
        return trim_padding(batch)

    def input_tokens(self, batch: Batch) -> int:
        return int(batch["attention_mask"].sum())


def build_classification(
    ctx: Context,
    make: Callable[[Context, list], ClassificationTask],
    columns: list[str],
    label_values: Callable[[datasets.Dataset, DataConfig], list],
    target: str,
) -> Built:
    """A classifier's examples: labelled splits, the classes of the training split (its
    `target` column: fewer than two is an error), and with objective.class_weights=balanced
    the weights of its label frequencies."""
    config = ctx.config
    raw = load_labelled(config.data, columns, config.seed)
    labels = class_names(label_values(raw["train"], config.data), target)
    built = build_rows(ctx, make, raw, labels)
    if config.objective.class_weights == "balanced":
        # per-example labels are [N], per-token labels [N, T]: count them all alike
        labels = built.examples["train"]["labels"].flatten()
        built.objective.class_weight = balanced_weights(labels, len(built.labels))
    return built


def labelled_build(
    task: type,
    target: Callable[[DataConfig], str],
    make_task: Callable[[Context, list], ClassificationTask],
) -> Callable[[Context], Built]:
    """The `build` of a classifier: the rows of `task`'s columns and the classes of its
    `target` column (`task.columns`, `task.label_values`), the task `make_task` gives (a
    distilled student reads the same rows as the plain task)."""

    def build(ctx: Context) -> Built:
        d = ctx.config.data
        return build_classification(ctx, make_task, task.columns(d), task.label_values, target(d))

    return build
