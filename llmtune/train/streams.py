"""Random streams per rank: the global RNG (dropout) seeded per rank, one generator per
micro-batch for targets (MLM masks), and each rank's RNG state saved for an exact resume.

Loader worker processes (hardware.num_workers, data/loader.py) draw from none of these:
every random choice made while building a batch (BERT pairs) is seeded by (seed, epoch, row),
so batches are the same whichever process builds them, and resume needs no worker state.
"""

from __future__ import annotations

from typing import Any

import torch

from llmtune.train import distributed
from llmtune.train.resume import restore_rng, rng_state


def rank_seed(seed: int, rank: int) -> int:
    """The global RNG seed of a rank: rank 0 keeps `seed` (single-process runs are unchanged),
    the others get their own, or every rank would drop out the same units."""
    return seed if rank == 0 else (seed * 1_000_003 + rank * 998_244_353) % (2**63)


def micro_batch_rng(seed: int, step: int, micro: int) -> torch.Generator:
    """A generator per (seed, step, micro-batch): targets are reproducible after a resume."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 4099 + micro)


def micro_batch_rngs(seed: int, step: int, rank: int, accum: int) -> list[torch.Generator]:
    """This rank's generators for the micro-batches of one step; rank r takes the micro
    indices r*accum ... r*accum+accum-1, so no two ranks draw the same targets."""
    return [micro_batch_rng(seed, step, rank * accum + i) for i in range(accum)]


def saved_rng() -> dict[str, Any]:
    """This process's RNG state, with every rank's when several run (rank 0 writes them)."""
    own = rng_state()
    if distributed.current().world_size == 1:
        return own
    return {**own, "ranks": distributed.gather(own)}


def restore_rank_rng(state: dict[str, Any], seed: int, step: int) -> None:
    """Each rank continues its own stream; a checkpoint from another world size has none
    for some ranks, which then start a fresh stream distinct per (rank, step)."""
    info = distributed.current()
    ranks = state.get("ranks")
    if ranks is not None and len(ranks) == info.world_size:
        restore_rng(ranks[info.rank])
        return
    restore_rng(state)
    if info.rank:
        torch.manual_seed(rank_seed(seed, info.rank) + step)
