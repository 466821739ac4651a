"""Micro-batches from an example table: a resumable, sharded, shuffled stream (read ahead by
loader worker processes when asked), and evaluation batches in fixed order."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import torch

from llmtune.config.schema import RunConfig
from llmtune.data.rows import Batch, Rows, as_rows
from llmtune.errors import DataError

# Batches sorted together by length: wide enough to find rows of like length, narrow enough
# that batch contents still change from epoch to epoch.
GROUP_WINDOW = 50


class BatchIterator:
    """Infinite iterator of micro-batches, each the rows of `examples` at some row numbers.

    Every epoch draws a permutation from a generator seeded by (seed, epoch), so any epoch can
    be regenerated from the seed alone; that is what makes `load_state_dict` resume exactly.
    Rank r takes rows perm[r::world_size], cut to the same length on every rank, so ranks
    never overlap and all run the same number of steps. The incomplete last batch is dropped.
    Micro-batch g of the stream is a function of (seed, rank, g) alone (`batch_at`), so
    loader workers can build batches ahead of time and still give the same stream.

    `group_by_length` (in-memory rows with an attention_mask): each window of GROUP_WINDOW
    batches is sorted by length before it is cut into batches, and the batches are then
    shuffled, so a batch pads to a length near its rows' own; the order is still a function
    of (seed, epoch).
    """

    def __init__(
        self,
        examples: Batch | Rows,
        micro_batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        group_by_length: bool = False,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.data = as_rows(examples)
        self.micro_batch_size = micro_batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        mask = examples.get("attention_mask") if isinstance(examples, dict) else None
        # [N] real lengths, or None: packed pretraining rows are all full, nothing to group
        self.lengths = mask.sum(1) if group_by_length and mask is not None else None
        self.num_rows = len(self.data)
        self.batches_per_epoch = (self.num_rows // world_size) // micro_batch_size
        if self.batches_per_epoch == 0:
            raise DataError(
                f"data: {self.num_rows} training sequences cannot fill one micro-batch of "
                f"{micro_batch_size} on each of {world_size} rank(s); add data or lower "
                "train.micro_batch_size"
            )
        self.ordinal = 0  # micro-batches already yielded, over all epochs
        self._order: tuple[int, torch.Tensor] | None = None  # (epoch, this rank's rows)

    @property
    def epoch(self) -> int:
        return self.ordinal // self.batches_per_epoch

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

    def batch_at(self, ordinal: int) -> Batch:
        """Micro-batch number `ordinal` of this rank's stream."""
        epoch, position = divmod(ordinal, self.batches_per_epoch)
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, self._rank_order(epoch))
        start = position * self.micro_batch_size
        return self.data.rows(self._order[1][start : start + self.micro_batch_size], epoch)

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> Batch:
        batch = self.batch_at(self.ordinal)
        self.ordinal += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        """Where the stream stands; saved with a checkpoint for an exact resume."""
        epoch, position = divmod(self.ordinal, self.batches_per_epoch)
        return {"epoch": epoch, "position": position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.ordinal = int(state["epoch"]) * self.batches_per_epoch + int(state["position"])


class _BatchAt(torch.utils.data.Dataset):
    """Map-style view of a BatchIterator for torch's DataLoader: item g is micro-batch g."""

    def __init__(self, batches: BatchIterator) -> None:
        self.batches = batches

    def __getitem__(self, ordinal: int) -> Batch:
        return self.batches.batch_at(ordinal)


class Prefetcher:
    """A BatchIterator read ahead by `num_workers` loader processes (torch's DataLoader), and
    pinned for fast copies to a GPU. Batch g is built from (seed, rank, g) alone, whichever
    worker builds it, so the stream is the one the BatchIterator gives in-process; the
    workers' own random seeds come from a private generator, never from the global RNG
    (dropout's stream would shift). The position saved is what the loop consumed, so a
    resume restarts the workers there and reads-ahead are never skipped or repeated."""

    def __init__(self, batches: BatchIterator, num_workers: int, pin_memory: bool) -> None:
        self.batches, self.num_workers, self.pin_memory = batches, num_workers, pin_memory
        self._it: Iterator[Batch] | None = None

    @property
    def epoch(self) -> int:
        return self.batches.epoch

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> Batch:
        if self._it is None:
            loader = torch.utils.data.DataLoader(
                _BatchAt(self.batches),
                batch_size=None,
                sampler=itertools.count(self.batches.ordinal),
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                generator=torch.Generator().manual_seed(self.batches.seed),
            )
            self._it = iter(loader)
        batch = next(self._it)
        self.batches.ordinal += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return self.batches.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batches.load_state_dict(state)
        self._it = None  # the workers restart at the new position


def train_batches(
    examples: Batch | Rows | Any, config: RunConfig, shard: tuple[int, int], grouped: bool
) -> Any:
    """This rank's micro-batches of the training examples (shard = (rank, world size)), read
    ahead by hardware.num_workers loader processes and pinned on a GPU. A stream (data=hub
    data.streaming=true) brings its own iterator."""
    if hasattr(examples, "train_batches"):
        return examples.train_batches(config, shard)
    micro, seed = config.train.micro_batch_size, config.seed
    batches = BatchIterator(examples, micro, seed, *shard, group_by_length=grouped)
    pin = config.hardware.device != "cpu" and torch.cuda.is_available()
    if config.hardware.num_workers > 0 or pin:
        return Prefetcher(batches, config.hardware.num_workers, pin)
    return batches


def _mix(seed: int, epoch: int) -> int:
    """One 63-bit generator seed per (seed, epoch) pair, distinct for realistic values."""
    return (seed * 1_000_003 + epoch) % (2**63)


def iter_eval_batches(
    examples: Batch | Rows, micro_batch_size: int, max_batches: int = 0
) -> Iterator[Batch]:
    """Batches in fixed row order (last one may be smaller); at most max_batches (0 = all)."""
    data = as_rows(examples)
    n = len(data)
    for i, start in enumerate(range(0, n, micro_batch_size)):
        if max_batches and i >= max_batches:
            return
        index = torch.arange(start, min(start + micro_batch_size, n))
        yield data.rows(index, 0)
