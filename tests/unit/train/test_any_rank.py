"""distributed.any_rank: each flag OR-ed over ranks, as plain bools (the loop's stop check)."""

from __future__ import annotations

import os
import socket

import torch.distributed as dist
import torch.multiprocessing as mp

from llmtune.train import distributed


def test_one_process_gives_its_own_flags_as_bools():
    result = distributed.any_rank(True, False)
    assert result == (True, False)
    assert all(type(flag) is bool for flag in result)


def _rank(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        # rank 0 is late, rank 1 was preempted: every rank must see both
        out[rank] = distributed.any_rank(rank == 0, rank == 1, False)
    finally:
        dist.destroy_process_group()


def test_two_ranks_agree_on_every_flag():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_rank, args=(port, out), nprocs=2)
    assert out[0] == out[1] == (True, True, False)
