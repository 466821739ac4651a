"""Packing labelled rows (data.packing=true): rows never exceed seq_len, every example lands in
exactly one row, once, in a layout fixed by the seed; over-long examples follow data.overlong
exactly as unpacked sft rows do."""

from __future__ import annotations

import json
import random

import pytest
from rich.console import Console

from llmtune.config.schema import FilesData, RunConfig
from llmtune.data import tokenizer_info, train_tokenizer
from llmtune.data.labelled import IGNORE, Encoded
from llmtune.data.row_packing import pack_encoded, pack_order
from llmtune.errors import DataError
from llmtune.models.family import Kind
from llmtune.models.registry import model_config
from llmtune.objectives import Context, entry
from llmtune.objectives.sft import SFTConfig
from tests.conftest import make_documents


def _encoded(lengths: list[int]) -> Encoded:
    """Example i: tokens 1000*i + position, the first two a prompt (IGNORE)."""
    ids = [[1000 * i + p for p in range(n)] for i, n in enumerate(lengths)]
    labels = [[IGNORE] * min(2, n) + r[2:] for r, n in zip(ids, lengths)]
    return Encoded({"input_ids": ids, "labels": labels})


def test_rows_fit_and_hold_every_example_once():
    rng = random.Random(0)
    lengths = [rng.randint(1, 20) for _ in range(300)] + [20, 20]
    packed, stats = pack_encoded(_encoded(lengths), seq_len=20, seed=4)
    rows = packed.rows
    assert all(len(r) <= 20 for r in rows["input_ids"])
    seen = sorted(t // 1000 for row in rows["input_ids"] for t in row if t % 1000 == 0)
    assert seen == list(range(len(lengths)))  # each example's first token, exactly once
    for ids, labels, docs in zip(rows["input_ids"], rows["labels"], rows["doc_ids"]):
        assert len(ids) == len(labels) == len(docs)
        # examples are contiguous, numbered 0, 1, ... in the row, each starting at its token 0
        starts = [p for p in range(len(ids)) if p == 0 or docs[p] != docs[p - 1]]
        assert [docs[p] for p in starts] == list(range(len(starts)))
        assert all(ids[p] % 1000 == 0 and labels[p] == IGNORE for p in starts)
        assert all(t in (IGNORE, i) for t, i in zip(labels, ids))
    assert stats.examples == len(lengths) and stats.rows == len(rows["input_ids"])
    assert stats.tokens == sum(lengths) and stats.rows >= -(-sum(lengths) // 20)
    assert stats.padding_after < 0.05 < stats.padding_before
    assert "packed 302 examples into" in stats.describe("train")


def test_layout_is_fixed_by_the_seed():
    lengths = [3, 5, 3, 5, 7, 2, 3, 5] * 10
    assert pack_order(lengths, 16, seed=1) == pack_order(lengths, 16, seed=1)
    assert pack_order(lengths, 16, seed=1) != pack_order(lengths, 16, seed=2)
    with pytest.raises(ValueError, match="more than seq_len"):
        pack_order([4, 17], 16, seed=0)


@pytest.fixture(scope="module")
def bpe():
    return train_tokenizer(make_documents(40), "bpe", 300, 1, True)


def _build(tmp_path, bpe, overlong: str):
    rows = [{"instruction": "a river", "response": "north"} for _ in range(12)]
    rows.append({"instruction": "long", "response": "the old stone city " * 8})
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = FilesData(
        train=str(path), validation=str(path), packing=True, overlong=overlong, min_chars=1
    )
    model = model_config("gpt", max_seq_len=24)
    sft = SFTConfig(prompt_template="{instruction}:")
    config = RunConfig(command="finetune", model=model, data=data, objective=sft)
    out = Console(record=True, width=200)
    ctx = Context(config, bpe, tokenizer_info(bpe, "bpe"), Kind.DECODER, console=out)
    return entry("sft").build(ctx), out.export_text()


def test_overlong_examples_follow_data_overlong(tmp_path, bpe):
    built, said = _build(tmp_path, bpe, "truncate")
    val = built.examples["validation"]
    full = val["attention_mask"].sum(1) == 24
    # the long example, cut to max_seq_len, fills a row of its own
    assert int(full.sum()) >= 1 and bool((val["doc_ids"][full] == 0).all())
    assert val["input_ids"].shape[0] < 13 and "13 examples into" in said
    assert "1 of 13 rows cut to model.max_seq_len=24" in said
    dropped, said = _build(tmp_path, bpe, "drop")
    assert "12 examples into" in said
    assert int(dropped.examples["train"]["attention_mask"].sum()) < int(
        built.examples["train"]["attention_mask"].sum()
    )
    with pytest.raises(DataError, match="model.max_seq_len=24"):
        _build(tmp_path, bpe, "error")
