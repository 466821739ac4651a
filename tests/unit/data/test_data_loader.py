"""Batch iterator: exact resume, disjoint covering rank shards, per-seed determinism; eval order."""

import itertools

import pytest
import torch

from llmtune.data.loader import BatchIterator, iter_eval_batches
from llmtune.errors import DataError

N = 24


def _tensors(n: int = N) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.arange(n)[:, None].repeat(1, 3), "label": torch.arange(n)}


def _rows(batches) -> list[list[int]]:
    return [b["label"].tolist() for b in batches]


def test_batches_are_row_slices_of_every_tensor():
    batch = next(BatchIterator(_tensors(), micro_batch_size=4, seed=0))
    assert batch["input_ids"].shape == (4, 3)
    assert torch.equal(batch["input_ids"][:, 0], batch["label"])


def test_resume_yields_exactly_the_same_following_batches():
    it = BatchIterator(_tensors(), micro_batch_size=5, seed=7)  # 4 batches/epoch, 4 rows dropped
    reference = _rows(itertools.islice(BatchIterator(_tensors(), 5, seed=7), 20))
    head = _rows(itertools.islice(it, 7))  # stop mid-epoch 1
    state = it.state_dict()
    assert state == {"epoch": 1, "position": 3} and it.epoch == 1
    resumed = BatchIterator(_tensors(), 5, seed=7)
    resumed.load_state_dict(state)
    assert head + _rows(itertools.islice(resumed, 13)) == reference


def test_each_epoch_visits_rows_once_in_a_new_order():
    it = BatchIterator(_tensors(), micro_batch_size=4, seed=0)
    epochs = [sum(_rows(itertools.islice(it, 6)), []) for _ in range(3)]
    assert all(sorted(e) == list(range(N)) for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]


def test_ranks_are_disjoint_and_cover_the_data():
    world = 3
    iterators = [BatchIterator(_tensors(), 4, 1, rank=r, world_size=world) for r in range(world)]
    shards = [sum(_rows(itertools.islice(it, 2)), []) for it in iterators]
    assert all(len(s) == N // world for s in shards)
    assert sorted(sum(shards, [])) == list(range(N))


def test_same_seed_same_order_other_seed_other_order():
    def first_epoch(seed):
        return _rows(itertools.islice(BatchIterator(_tensors(), 4, seed=seed), 6))

    assert first_epoch(0) == first_epoch(0)
    assert first_epoch(0) != first_epoch(1)


def test_without_shuffle_rows_come_in_order():
    rows = _rows(itertools.islice(BatchIterator(_tensors(), 4, seed=0, shuffle=False), 7))
    assert sum(rows, []) == list(range(N)) + [0, 1, 2, 3]


def test_too_few_rows_for_one_batch_is_a_data_error():
    with pytest.raises(DataError, match="micro_batch_size"):
        BatchIterator(_tensors(3), micro_batch_size=2, seed=0, world_size=2)


def test_eval_batches_are_fixed_order_and_capped():
    assert _rows(iter_eval_batches(_tensors(10), 4, max_batches=0)) == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8, 9],
    ]
    assert _rows(iter_eval_batches(_tensors(10), 4, max_batches=2)) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def _ragged(n: int = 1000, width: int = 64) -> dict[str, torch.Tensor]:
    """Rows numbered in input_ids[:, 0] with random real lengths in attention_mask."""
    lengths = torch.randint(5, width, (n,), generator=torch.Generator().manual_seed(1))
    mask = (torch.arange(width)[None] < lengths[:, None]).long()
    return {"input_ids": torch.arange(n)[:, None].expand(n, width).clone(), "attention_mask": mask}


def _epoch(batches: BatchIterator) -> list[dict[str, torch.Tensor]]:
    return [next(batches) for _ in range(batches.batches_per_epoch)]


def test_group_by_length_keeps_coverage_and_cuts_padding():
    data = _ragged()
    plain, grouped = (_epoch(BatchIterator(data, 16, 3, group_by_length=g)) for g in (False, True))
    for epoch in (plain, grouped):
        rows = torch.cat([b["input_ids"][:, 0] for b in epoch])
        assert len(rows) == len(set(rows.tolist())) == 992  # every full batch, no repeats

    def mean_width(epoch):
        return sum(int(b["attention_mask"].sum(1).max()) for b in epoch) / len(epoch)

    # rows of like length share a batch: far less padding than a plain shuffle
    assert mean_width(grouped) < 0.7 * mean_width(plain)
    # ... but batch order is still shuffled, not sorted longest-first across the epoch
    widths = [int(b["attention_mask"].sum(1).max()) for b in grouped]
    assert widths != sorted(widths, reverse=True)


def test_group_by_length_resumes_exactly_and_changes_with_epoch():
    data = _ragged()
    batches = BatchIterator(data, 16, 3, group_by_length=True)
    first, second = _epoch(batches), _epoch(batches)
    assert not torch.equal(first[0]["input_ids"], second[0]["input_ids"])
    resumed = BatchIterator(data, 16, 3, group_by_length=True)
    resumed.load_state_dict({"epoch": 1, "position": 7})
    assert torch.equal(next(resumed)["input_ids"], second[7]["input_ids"])


def test_loader_workers_give_the_in_process_stream_and_resume_exactly():
    from llmtune.data.loader import Prefetcher

    reference = _rows(itertools.islice(BatchIterator(_tensors(), 5, seed=7), 14))
    rng_before = torch.get_rng_state()
    ahead = Prefetcher(BatchIterator(_tensors(), 5, seed=7), num_workers=2, pin_memory=False)
    head = _rows(itertools.islice(ahead, 6))
    # the workers' seeds come from a private generator: dropout's stream is untouched
    assert torch.equal(torch.get_rng_state(), rng_before)
    state = ahead.state_dict()  # what was consumed, not what the workers read ahead
    assert state == {"epoch": 1, "position": 2}
    resumed = Prefetcher(BatchIterator(_tensors(), 5, seed=7), num_workers=2, pin_memory=False)
    resumed.load_state_dict(state)
    assert head + _rows(itertools.islice(resumed, 8)) == reference


def test_rows_tables_are_batched_like_tensors():
    from llmtune.data.rows import TensorRows

    tensors = _tensors()
    plain = _rows(itertools.islice(BatchIterator(tensors, 4, seed=2), 9))
    table = _rows(itertools.islice(BatchIterator(TensorRows(tensors), 4, seed=2), 9))
    assert plain == table
    assert _rows(iter_eval_batches(TensorRows(_tensors(10)), 4)) == _rows(
        iter_eval_batches(_tensors(10), 4)
    )
