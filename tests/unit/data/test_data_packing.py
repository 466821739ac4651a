"""GPT packing: blocks are the EOS-joined stream, doc ids restart per block and include the EOS."""

import time

import datasets
import numpy as np
import pytest
import torch

from llmtune.data.packing import pack_documents
from llmtune.errors import DataError

EOS = 0


def _ids(docs: list[list[int]]) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"input_ids": docs})


def test_blocks_are_the_eos_joined_stream():
    docs = [[1, 2, 3], [4], [], [5, 6, 7, 8, 9], [10, 11]]
    out = pack_documents(_ids(docs), seq_len=4, eos_id=EOS)
    stream = [t for d in docs for t in [*d, EOS]]  # 16 tokens -> 4 blocks, no tail
    assert out["input_ids"].dtype == torch.int64 and out["doc_ids"].dtype == torch.int32
    assert out["input_ids"].shape == (4, 4)
    assert out["input_ids"].flatten().tolist() == stream


def test_doc_ids_restart_per_block_and_eos_belongs_to_its_document():
    docs = [[1, 2, 3], [4], [], [5, 6, 7, 8, 9], [10, 11]]
    out = pack_documents(_ids(docs), seq_len=4, eos_id=EOS)
    # stream: 1 2 3 E | 4 E E 5 | 6 7 8 9 | E 10 11 E
    assert out["doc_ids"].tolist() == [
        [0, 0, 0, 0],
        [0, 0, 1, 2],
        [0, 0, 0, 0],
        [0, 1, 1, 1],
    ]


def test_ragged_tail_is_dropped_and_too_little_data_is_an_error():
    out = pack_documents(_ids([[1, 2, 3, 4, 5, 6, 7]]), seq_len=3, eos_id=EOS)
    assert out["input_ids"].tolist() == [[1, 2, 3], [4, 5, 6]]  # "7 EOS" dropped
    with pytest.raises(DataError, match="model.max_seq_len=16"):
        pack_documents(_ids([[1, 2]]), seq_len=16, eos_id=EOS)


def test_respects_selected_rows():
    ds = _ids([[1, 1], [2, 2], [3, 3]]).select([2, 0])
    out = pack_documents(ds, seq_len=3, eos_id=EOS)
    assert out["input_ids"].tolist() == [[3, 3, EOS], [1, 1, EOS]]


def test_a_million_tokens_pack_in_under_a_second():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 400, size=5000)
    docs = [rng.integers(1, 30000, size=n).tolist() for n in lengths]
    ds = _ids(docs)
    start = time.perf_counter()
    out = pack_documents(ds, seq_len=256, eos_id=EOS)
    assert time.perf_counter() - start < 1.0
    total = int(lengths.sum()) + len(docs)
    assert out["input_ids"].shape == (total // 256, 256)
    assert (out["input_ids"] == EOS).sum() <= len(docs)
