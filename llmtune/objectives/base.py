"""The objective protocol: draw targets, count them, and return per-term summed losses.

The loop normalises each term by its *global* target count, counted before the forward,
so gradient accumulation and multi-term objectives (MLM + NSP) are exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from llmtune.config.schema import RunConfig
from llmtune.data.labelled import Encoded

Batch = dict[str, Tensor]


@dataclass
class TermResult:
    """One loss term of one micro-batch: summed loss and how many predictions were right."""

    loss_sum: Tensor
    n_correct: Tensor
    # classification terms also return their argmax predictions and targets (rows whose
    # target is -100 removed), so evaluation can compute F1 without a second forward
    predicted: Tensor | None = None
    target: Tensor | None = None
    # further validation metrics as {name: (sum, count)}; reported as val_<term>_<name> =
    # total sum / total count (e.g. DPO's reward margin per pair, PPO's reward per rollout)
    extra: dict[str, tuple[Tensor, Tensor]] | None = None
    # per-row terms (token_cls) also say how many of those kept targets each row holds, so
    # validation can cut the flat predictions back into sentences (entity-level metrics)
    row_sizes: Tensor | None = None


class Objective(Protocol):
    """What the training loop, validation and evaluate drive; built by an ObjectiveEntry."""

    name: str
    heads: tuple[str, ...]  # heads the model must have
    lm_term: str  # the term whose mean loss gives perplexity
    # exp(mean lm_term loss) is a perplexity (False: a classifier's or a pairwise loss)
    perplexity: bool
    # lm_term's targets go through the vocabulary projection (counted in model FLOPs)
    vocab_head: bool
    # rows are packed to full length (pretraining): nothing to gain from length grouping
    packed: bool

    def prepare(self, batch: Batch, generator: torch.Generator | None) -> Batch:
        """Add this step's targets to a micro-batch (e.g. draw the MLM mask)."""

    def count(self, batch: Batch) -> dict[str, Tensor]:
        """Number of targets per loss term in a prepared micro-batch."""

    def losses(self, model: torch.nn.Module, batch: Batch) -> dict[str, TermResult]:
        """Summed loss (and correct predictions) per term for a prepared micro-batch."""

    def input_tokens(self, batch: Batch) -> int:
        """Real (non-padding) input tokens in a micro-batch, for tokens/s."""

    def bind(self, model: torch.nn.Module, config: RunConfig) -> None:
        """Before training: see the model as loaded (dpo, ppo keep it as their reference)."""

    def train_metrics(self) -> dict[str, float]:
        """Statistics logged with each train record since the last call (ppo's reward, KL)."""

    def row_metrics(self, rows: list[tuple[list[int], list[int]]]) -> dict[str, float]:
        """Validation metrics over per-row (predicted, target) ids of terms that return
        row_sizes (token_cls: entity F1); reported as val_<name>."""


class ObjectiveBase:
    """What most objectives do for the hooks they do not need."""

    def bind(self, model: torch.nn.Module, config: RunConfig) -> None:
        return None

    def train_metrics(self) -> dict[str, float]:
        return {}

    def row_metrics(self, rows: list[tuple[list[int], list[int]]]) -> dict[str, float]:
        return {}


class TextObjective(Objective, Protocol):
    """An objective on plain text (pretraining, continued pretraining)."""

    def make_examples(self, token_ids: Any, seq_len: int, seed: int) -> Any:
        """Fixed-length training examples read from a token store (data/store.py): a table
        of rows (data/rows.py) built on demand, never the whole corpus in memory."""


class RowTask(Objective, Protocol):
    """An objective on labelled rows: encodes a split, batches its encoding."""

    def encode(self, split: Any, seq_len: int, key: str = "train") -> Encoded:
        """Token rows of a Dataset split (or dict of columns) and which rows were too long."""

    def batch(self, encoded: Encoded) -> Batch:
        """Tensors of an encoded split (padded rows, masks, targets)."""


def sum_cross_entropy(
    logits: Tensor, targets: Tensor, weight: Tensor | None = None, keep: bool = False
) -> TermResult:
    """Summed cross-entropy over rows whose target is not -100, and the count right.

    `weight` rescales each class's terms (class weights); `keep` also returns predictions.
    The count right is a validation metric: with gradients on (a training step) it is 0, as
    the argmax over a vocabulary costs ~5% of bert-tiny's forward and nothing reads it.
    """
    logits = logits.float()
    loss = torch.nn.functional.cross_entropy(
        logits, targets, weight=weight, ignore_index=-100, reduction="sum"
    )
    if torch.is_grad_enabled() and not keep:
        return TermResult(loss, torch.zeros((), dtype=torch.long, device=loss.device))
    valid = targets != -100
    predicted = logits.argmax(-1)
    correct = ((predicted == targets) & valid).sum()
    if not keep:
        return TermResult(loss, correct)
    return TermResult(loss, correct, predicted[valid], targets[valid])


def hidden_states(model: torch.nn.Module, batch: Batch) -> Tensor:
    """[B,T,D] features of right-padded rows, read as the model's family reads a batch (an
    encoder takes segments and the padding mask; a causal decoder needs neither)."""
    return model.features(batch)


def pooled_features(model: torch.nn.Module, batch: Batch) -> Tensor:
    """[B,D] sequence features, pooled as the family pools (bert: its pooled [CLS]; gpt: the
    last real token, the only one that has seen the whole row)."""
    return model.pool(model.features(batch), batch["attention_mask"].sum(1) - 1)
