"""Micro-batches from in-memory tensors: a resumable sharded shuffled stream, and eval batches."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from llmtune.errors import DataError

Batch = dict[str, torch.Tensor]


def _num_rows(tensors: Batch) -> int:
    sizes = {t.shape[0] for t in tensors.values()}
    if len(sizes) != 1:
        raise ValueError(f"tensors disagree on their first dimension: {sorted(sizes)}")
    return sizes.pop()


# Batches sorted together by length: wide enough to find rows of like length, narrow enough
# that batch contents still change from epoch to epoch.
GROUP_WINDOW = 50


class BatchIterator:
    """Infinite iterator of micro-batches, each a dict of row slices of `tensors`.

    Every epoch draws a permutation from a generator seeded by (seed, epoch), so any epoch can
    be regenerated from the seed alone; that is what makes `load_state_dict` resume exactly.
    Rank r takes rows perm[r::world_size], cut to the same length on every rank, so ranks
    never overlap and all run the same number of steps. The incomplete last batch is dropped.
    Batches are slices taken in the training process, with no loader worker processes, so
    there are no worker random streams to seed (train/streams.py seeds each rank's).

    `group_by_length` (rows with an attention_mask): each window of GROUP_WINDOW batches is
    sorted by length before it is cut into batches, and the batches are then shuffled, so a
    batch pads to a length near its rows' own; the order is still a function of (seed, epoch).
    """

    def __init__(
        self,
        tensors: Batch,
        micro_batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        group_by_length: bool = False,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.tensors = tensors
        self.micro_batch_size = micro_batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        mask = tensors.get("attention_mask")
        # [N] real lengths, or None: packed pretraining rows are all full, nothing to group
        self.lengths = mask.sum(1) if group_by_length and mask is not None else None
        self.num_rows = _num_rows(tensors)
        self.batches_per_epoch = (self.num_rows // world_size) // micro_batch_size
        if self.batches_per_epoch == 0:
            raise DataError(
                f"data: {self.num_rows} training sequences cannot fill one micro-batch of "
                f"{micro_batch_size} on each of {world_size} rank(s); add data or lower "
                "train.micro_batch_size"
            )
        self._epoch = 0
        self._position = 0  # batches already yielded in the current epoch
        self._order: torch.Tensor | None = None  # this rank's rows for the current epoch

    @property
    def epoch(self) -> int:
        return self._epoch

    def _rank_order(self, epoch: int) -> torch.Tensor:
        if self.shuffle:
            gen = torch.Generator().manual_seed(_mix(self.seed, epoch))
            perm = torch.randperm(self.num_rows, generator=gen)
        else:
            perm = torch.arange(self.num_rows)
        per_rank = self.num_rows // self.world_size
        order = perm[self.rank :: self.world_size][:per_rank]
        if self.lengths is None or not self.shuffle:
            return order
        return self._grouped(order, gen)

    def _grouped(self, order: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """`order` regrouped so each batch holds rows of similar length, batches shuffled."""
        size = self.micro_batch_size
        used = self.batches_per_epoch * size  # the dropped remainder stays dropped
        order, rest = order[:used], order[used:]
        window = GROUP_WINDOW * size
        chunks = []
        for start in range(0, used, window):
            chunk = order[start : start + window]
            # stable sort: ties keep their shuffled order
            chunks.append(chunk[torch.sort(self.lengths[chunk], descending=True, stable=True)[1]])
        batches = torch.cat(chunks).view(-1, size)
        batches = batches[torch.randperm(len(batches), generator=gen)]
        return torch.cat([batches.reshape(-1), rest])

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> Batch:
        if self._position >= self.batches_per_epoch:
            self._epoch += 1
            self._position = 0
            self._order = None
        if self._order is None:
            self._order = self._rank_order(self._epoch)
        start = self._position * self.micro_batch_size
        rows = self._order[start : start + self.micro_batch_size]
        self._position += 1
        return {k: t[rows] for k, t in self.tensors.items()}

    def state_dict(self) -> dict[str, int]:
        """Where the stream stands; saved with a checkpoint for an exact resume."""
        return {"epoch": self._epoch, "position": self._position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._epoch = int(state["epoch"])
        self._position = int(state["position"])
        self._order = None


def _mix(seed: int, epoch: int) -> int:
    """One 63-bit generator seed per (seed, epoch) pair, distinct for realistic values."""
    return (seed * 1_000_003 + epoch) % (2**63)


def iter_eval_batches(
    tensors: Batch, micro_batch_size: int, max_batches: int = 0
) -> Iterator[Batch]:
    """Batches in fixed row order (last one may be smaller); at most max_batches (0 = all)."""
    n = _num_rows(tensors)
    for i, start in enumerate(range(0, n, micro_batch_size)):
        if max_batches and i >= max_batches:
            return
        yield {k: t[start : start + micro_batch_size] for k, t in tensors.items()}
