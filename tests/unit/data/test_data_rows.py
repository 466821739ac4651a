"""Example tables: in-memory tensors, and mixtures of tables drawn by weight (data=mix)."""

import collections

import pytest
import torch

from llmtune.data.rows import MixedRows, TensorRows, to_tensors


def _table(part: int, n: int) -> TensorRows:
    """Row i of part p holds (p, i)."""
    return TensorRows({"part": torch.full((n,), part), "row": torch.arange(n)})


def _epoch(mixed: MixedRows, epoch: int) -> list[tuple[int, int]]:
    out = mixed.rows(torch.arange(len(mixed)), epoch)
    return list(zip(out["part"].tolist(), out["row"].tolist(), strict=True))


def test_each_part_fills_its_weighted_share_of_an_epoch():
    mixed = MixedRows([_table(0, 30), _table(1, 10)], [1.0, 3.0], seed=0)
    assert len(mixed) == 40
    for epoch in range(3):
        counts = collections.Counter(p for p, _ in _epoch(mixed, epoch))
        assert counts == {0: 10, 1: 30}


def test_a_part_walks_all_its_rows_before_repeating_and_reshuffles():
    mixed = MixedRows([_table(0, 30), _table(1, 10)], [1.0, 3.0], seed=0)
    draws = [r for e in range(3) for p, r in _epoch(mixed, e) if p == 1]  # 90 draws of 10 rows
    cycles = [draws[i : i + 10] for i in range(0, 90, 10)]
    assert all(sorted(c) == list(range(10)) for c in cycles)
    assert len({tuple(c) for c in cycles}) > 1
    small = [r for e in range(3) for p, r in _epoch(mixed, e) if p == 0]  # 30 of 30: one pass
    assert sorted(small) == list(range(30))


def test_parts_are_interleaved_so_the_first_rows_already_mix():
    mixed = MixedRows([_table(0, 50), _table(1, 50)], [1.0, 1.0], seed=3)
    first = [p for p, _ in _epoch(mixed, 0)[:20]]
    assert 4 <= sum(first) <= 16


def test_deterministic_for_a_seed_and_any_batch_order():
    def make(seed):
        return MixedRows([_table(0, 20), _table(1, 7)], [2.0, 1.0], seed=seed)

    assert _epoch(make(1), 2) == _epoch(make(1), 2)
    assert _epoch(make(1), 0) != _epoch(make(2), 0)
    mixed = make(1)
    every = _epoch(mixed, 1)
    index = torch.tensor([5, 0, 26, 5])
    some = mixed.rows(index, 1)
    assert list(zip(some["part"].tolist(), some["row"].tolist())) == [every[i] for i in index]


def test_tensor_rows_refuse_ragged_tables_and_convert():
    with pytest.raises(ValueError, match="first dimension"):
        TensorRows({"a": torch.zeros(3), "b": torch.zeros(4)})
    table = _table(0, 5)
    assert torch.equal(to_tensors(table)["row"], torch.arange(5))
