"""The objective protocol: build examples, draw targets, and return per-term summed losses.

The loop normalises each term by its *global* target count, counted before the forward,
so gradient accumulation and multi-term objectives (MLM + NSP) are exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

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
    name: str
    heads: tuple[str, ...]  # heads the model must have
    lm_term: str  # the term whose mean loss gives perplexity
    # exp(mean lm_term loss) is a perplexity (False: a classifier's or a pairwise loss)
    perplexity: bool
    # lm_term's targets go through the vocabulary projection (counted in model FLOPs)
    vocab_head: bool
    # rows are packed to full length (pretraining): nothing to gain from length grouping
    packed: bool

    def make_examples(self, token_ids, seq_len: int, seed: int) -> Batch:
        """Fixed-length training examples read from a token store (data/store.py): a table
        of rows (data/rows.py) built on demand, never the whole corpus in memory."""

    def prepare(self, batch: Batch, generator: torch.Generator) -> Batch:
        """Add this step's targets to a micro-batch (e.g. draw the MLM mask)."""

    def count(self, batch: Batch) -> dict[str, Tensor]:
        """Number of targets per loss term in a prepared micro-batch."""

    def losses(self, model: torch.nn.Module, batch: Batch) -> dict[str, TermResult]:
        """Summed loss (and correct predictions) per term for a prepared micro-batch."""

    def input_tokens(self, batch: Batch) -> int:
        """Real (non-padding) input tokens in a micro-batch, for tokens/s."""

    # Task objectives (seq_cls, token_cls, sft) also offer, beyond the protocol:
    #   labels: list            label names, index = class id (seq_cls, token_cls)
    #   encode(split, seq_len) -> Encoded   token rows + truncation counts of a Dataset split
    #   make_examples(split, seq_len, seed) takes that Dataset split instead of token ids
    #   predictions(model, batch) -> (predicted, target)   1-D class ids for a prepared batch,
    #       positions without a label removed; used for F1 by the loop and by evaluate
    #   row_metrics(rows) -> dict   (token_cls) validation metrics over per-row (predicted,
    #       target) id lists, e.g. entity_f1; train/evaluation.py reports them as val_<name>


def sum_cross_entropy(
    logits: Tensor, targets: Tensor, weight: Tensor | None = None, keep: bool = False
) -> TermResult:
    """Summed cross-entropy over rows whose target is not -100, and the count right.

    `weight` rescales each class's terms (class weights); `keep` also returns predictions.
    """
    logits = logits.float()
    loss = torch.nn.functional.cross_entropy(
        logits, targets, weight=weight, ignore_index=-100, reduction="sum"
    )
    valid = targets != -100
    predicted = logits.argmax(-1)
    correct = ((predicted == targets) & valid).sum()
    if not keep:
        return TermResult(loss, correct)
    return TermResult(loss, correct, predicted[valid], targets[valid])


def hidden_states(model: torch.nn.Module, batch: Batch) -> Tensor:
    """[B,T,D] features of right-padded rows: bert reads segments and the padding mask; gpt
    needs neither (it is causal, so right padding never reaches a real token)."""
    if model.config.family == "bert":
        return model(
            batch["input_ids"],
            token_type_ids=batch["token_type_ids"],
            attention_mask=batch["attention_mask"],
        )
    return model(batch["input_ids"])


def pooled_features(model: torch.nn.Module, batch: Batch) -> Tensor:
    """[B,D] sequence features: bert's pooled [CLS]; gpt's last real token, the only one that
    has seen the whole row."""
    hidden = hidden_states(model, batch)
    if model.config.family == "bert":
        return model.pool(hidden)
    return model.pool(hidden, batch["attention_mask"].sum(1) - 1)
