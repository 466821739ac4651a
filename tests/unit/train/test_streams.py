"""Each rank draws its own random streams (dropout, MLM masks), each reproducible from the
seed; ranks are simulated in one process by the rank numbers the trainer passes."""

from __future__ import annotations

import torch

from llmtune.objectives.masking import MaskingSpec, mask_tokens
from llmtune.train import streams

SPEC = MaskingSpec(
    mask_prob=0.15,
    mask_token_frac=0.8,
    random_token_frac=0.1,
    mask_id=4,
    vocab_size=1000,
    special_ids=(0, 1, 2, 3, 4),
)
IDS = torch.randint(5, 1000, (8, 64), generator=torch.Generator().manual_seed(0))


def _dropout_mask(seed: int, rank: int) -> torch.Tensor:
    torch.manual_seed(streams.rank_seed(seed, rank))  # what Trainer.fit does on each rank
    return torch.nn.functional.dropout(torch.ones(4096), p=0.5) > 0


def _masks(seed: int, step: int, rank: int, accum: int = 2) -> list[torch.Tensor]:
    rngs = streams.micro_batch_rngs(seed, step, rank, accum)
    return [mask_tokens(IDS, SPEC, rng)[1] != -100 for rng in rngs]


def test_ranks_drop_out_different_units_each_reproducibly():
    rank0, rank1 = _dropout_mask(0, 0), _dropout_mask(0, 1)
    assert not torch.equal(rank0, rank1)
    assert torch.equal(rank0, _dropout_mask(0, 0)) and torch.equal(rank1, _dropout_mask(0, 1))
    torch.manual_seed(0)  # rank 0 of any run keeps the plain seed: single-process runs unchanged
    assert torch.equal(rank0, torch.nn.functional.dropout(torch.ones(4096), p=0.5) > 0)


def test_ranks_draw_different_mlm_masks_each_reproducibly():
    rank0, rank1 = _masks(0, step=5, rank=0), _masks(0, step=5, rank=1)
    every = rank0 + rank1  # the four micro-batches of one step across two ranks
    assert all(not torch.equal(a, b) for i, a in enumerate(every) for b in every[i + 1 :])
    again = _masks(0, step=5, rank=1)
    assert all(torch.equal(a, b) for a, b in zip(rank1, again))
    assert not torch.equal(_masks(0, step=6, rank=0)[0], rank0[0])  # a new step, new masks


def test_each_rank_resumes_its_own_stream(monkeypatch):
    """The checkpoint holds every rank's RNG state; rank 1 restores its own, not rank 0's."""
    from llmtune.train import distributed

    states = []
    for rank in (0, 1):
        torch.manual_seed(streams.rank_seed(0, rank))
        states.append(streams.rng_state())
    saved = {**states[0], "ranks": states}
    for rank in (0, 1):
        monkeypatch.setattr(
            distributed, "current", lambda r=rank: distributed.DistInfo(rank=r, world_size=2)
        )
        streams.restore_rank_rng(saved, seed=0, step=3)
        drawn = torch.rand(8)
        torch.manual_seed(streams.rank_seed(0, rank))
        assert torch.equal(drawn, torch.rand(8))
