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


class Objective(Protocol):
    name: str
    heads: tuple[str, ...]  # heads the model must have
    lm_term: str  # the term whose mean loss gives perplexity

    def make_examples(self, token_ids, seq_len: int, seed: int) -> Batch:
        """Fixed-length training examples from a dataset of per-document token ids."""

    def prepare(self, batch: Batch, generator: torch.Generator) -> Batch:
        """Add this step's targets to a micro-batch (e.g. draw the MLM mask)."""

    def count(self, batch: Batch) -> dict[str, Tensor]:
        """Number of targets per loss term in a prepared micro-batch."""

    def losses(self, model: torch.nn.Module, batch: Batch) -> dict[str, TermResult]:
        """Summed loss (and correct predictions) per term for a prepared micro-batch."""

    def input_tokens(self, batch: Batch) -> int:
        """Real (non-padding) input tokens in a micro-batch, for tokens/s."""


def sum_cross_entropy(logits: Tensor, targets: Tensor) -> TermResult:
    """Summed cross-entropy over rows whose target is not -100, and the count right."""
    logits = logits.float()
    loss = torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")
    valid = targets != -100
    correct = ((logits.argmax(-1) == targets) & valid).sum()
    return TermResult(loss, correct)
