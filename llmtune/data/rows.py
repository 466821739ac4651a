"""Example tables read by row number: the protocol every table follows (packed windows, BERT
pairs, in-memory tensors), and the mixture of several tables drawn by weight."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

Batch = dict[str, torch.Tensor]


class Rows(Protocol):
    """A table of training examples; rows(index, epoch) builds those rows as tensors.

    Tables whose rows are drawn at random (BERT pairs) draw them from (seed, epoch, row),
    so the same row number gives the same example in any process, in any order.
    """

    def __len__(self) -> int: ...

    def rows(self, index: torch.Tensor, epoch: int = 0) -> Batch: ...


class TensorRows:
    """Examples already in memory (labelled fine-tuning data): a dict of [N, ...] tensors."""

    def __init__(self, tensors: Batch) -> None:
        sizes = {t.shape[0] for t in tensors.values()}
        if len(sizes) != 1:
            raise ValueError(f"tensors disagree on their first dimension: {sorted(sizes)}")
        self.tensors = tensors
        self.n_rows = sizes.pop()

    def __len__(self) -> int:
        return self.n_rows

    def rows(self, index: torch.Tensor, epoch: int = 0) -> Batch:
        return {k: t[index] for k, t in self.tensors.items()}


def as_rows(examples: Batch | Rows) -> Rows:
    return TensorRows(examples) if isinstance(examples, dict) else examples


def to_tensors(examples: Batch | Rows) -> Batch:
    """Every row in memory (multitask stacks its tasks' tables this way)."""
    if isinstance(examples, dict):
        return examples
    return examples.rows(torch.arange(len(examples)), 0)


class MixedRows:
    """Several tables drawn by weight (data=mix). An epoch has as many rows as all parts
    together; part p fills round(w_p * total) of them (largest remainders), at positions
    shuffled by (seed, epoch). A part's slots walk through its own rows in an order
    reshuffled each time the part is used up, so a small corpus with a large weight repeats
    and a large one with a small weight is sampled: deterministic for a seed.
    """

    def __init__(self, parts: list[Rows], weights: list[float], seed: int) -> None:
        self.parts, self.seed = parts, seed
        self.sizes = [len(p) for p in parts]
        total = sum(self.sizes)
        share = np.asarray(weights, dtype=np.float64) / sum(weights) * total
        quota = np.floor(share).astype(np.int64)
        # largest remainders first (ties: the earlier part), until the quotas add up
        for p in np.argsort(-(share - quota), kind="stable")[: total - int(quota.sum())]:
            quota[p] += 1
        self.quota = quota
        self.n_rows = total
        self._layout: tuple[int, np.ndarray, np.ndarray] | None = None
        self._orders: dict[tuple[int, int], torch.Tensor] = {}

    def __len__(self) -> int:
        return self.n_rows

    def rows(self, index: torch.Tensor, epoch: int = 0) -> Batch:
        part_of, rank_in = self._slots(epoch)
        idx = index.numpy()
        picks: dict[tuple[int, int], list[tuple[int, int]]] = {}  # (part, its epoch) -> rows
        for position, slot in enumerate(idx):
            p = int(part_of[slot])
            k = epoch * int(self.quota[p]) + int(rank_in[slot])  # the part's k-th draw ever
            part_epoch, at = divmod(k, self.sizes[p])
            row = int(self._order(p, part_epoch)[at])
            picks.setdefault((p, part_epoch), []).append((position, row))
        out: dict[str, torch.Tensor] = {}
        for (p, part_epoch), chosen in picks.items():
            positions = torch.tensor([c[0] for c in chosen])
            batch = self.parts[p].rows(torch.tensor([c[1] for c in chosen]), part_epoch)
            for key, value in batch.items():
                if key not in out:
                    out[key] = value.new_zeros((len(idx), *value.shape[1:]))
                out[key][positions] = value
        return out

    def _slots(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """For each slot of the epoch: its part, and how many earlier slots the part has."""
        if self._layout is None or self._layout[0] != epoch:
            labels = np.repeat(np.arange(len(self.parts), dtype=np.int32), self.quota)
            gen = np.random.default_rng([self.seed, epoch, 7])
            labels = labels[gen.permutation(len(labels))]
            rank_in = np.empty(len(labels), dtype=np.int64)
            for p in range(len(self.parts)):
                where = np.flatnonzero(labels == p)
                rank_in[where] = np.arange(len(where))
            self._layout = (epoch, labels, rank_in)
        return self._layout[1], self._layout[2]

    def _order(self, part: int, part_epoch: int) -> torch.Tensor:
        key = (part, part_epoch)
        if key not in self._orders:
            if len(self._orders) > 8:  # only the current and next epoch of each part are used
                self._orders.pop(next(iter(self._orders)))
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + part) * 4099 + part_epoch)
            self._orders[key] = torch.randperm(self.sizes[part], generator=gen)
        return self._orders[key]
