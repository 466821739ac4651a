"""GPT packing from a token store: windows are the EOS-joined stream, doc ids restart per
window and include the EOS, exactly what packing the corpus in memory gave; memory holds the
document index only."""

import time
import tracemalloc

import numpy as np
import pytest
import torch

from llmtune.data import store as store_module
from llmtune.data.packing import pack_documents
from llmtune.errors import DataError

EOS = 0


def _all(windows) -> dict[str, torch.Tensor]:
    return windows.rows(torch.arange(len(windows)))


def _in_memory_packing(docs: list[list[int]], seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference: the whole corpus as one EOS-joined array, cut in blocks (the packing
    llmtune did in memory before token stores)."""
    stream = [t for d in docs for t in [*d, EOS]]
    doc = [i for i, d in enumerate(docs) for _ in range(len(d) + 1)]
    n = len(stream) // seq_len * seq_len
    ids = np.array(stream[:n]).reshape(-1, seq_len)
    doc = np.array(doc[:n]).reshape(-1, seq_len)
    return ids, doc - doc[:, :1]


def test_windows_are_the_eos_joined_stream(make_store):
    docs = [[1, 2, 3], [4], [], [5, 6, 7, 8, 9], [10, 11]]
    out = _all(pack_documents(make_store(docs), seq_len=4, eos_id=EOS))
    stream = [t for d in docs for t in [*d, EOS]]  # 16 tokens -> 4 windows, no tail
    assert out["input_ids"].dtype == torch.int64 and out["doc_ids"].dtype == torch.int32
    assert out["input_ids"].shape == (4, 4)
    assert out["input_ids"].flatten().tolist() == stream


def test_doc_ids_restart_per_window_and_eos_belongs_to_its_document(make_store):
    docs = [[1, 2, 3], [4], [], [5, 6, 7, 8, 9], [10, 11]]
    out = _all(pack_documents(make_store(docs), seq_len=4, eos_id=EOS))
    # stream: 1 2 3 E | 4 E E 5 | 6 7 8 9 | E 10 11 E
    assert out["doc_ids"].tolist() == [
        [0, 0, 0, 0],
        [0, 0, 1, 2],
        [0, 0, 0, 0],
        [0, 1, 1, 1],
    ]


def test_ragged_tail_is_dropped_and_too_little_data_is_an_error(make_store):
    out = _all(pack_documents(make_store([[1, 2, 3, 4, 5, 6, 7]]), seq_len=3, eos_id=EOS))
    assert out["input_ids"].tolist() == [[1, 2, 3], [4, 5, 6]]  # "7 EOS" dropped
    with pytest.raises(DataError, match="model.max_seq_len=16"):
        pack_documents(make_store([[1, 2]], key="short"), seq_len=16, eos_id=EOS)


@pytest.mark.parametrize("seq_len", [3, 7, 64])
def test_windows_match_packing_the_corpus_in_memory_across_shards(make_store, monkeypatch, seq_len):
    rng = np.random.default_rng(seq_len)
    docs = [rng.integers(1, 500, size=int(n)).tolist() for n in rng.integers(0, 90, size=80)]
    monkeypatch.setattr(store_module, "SHARD_TOKENS", 100)  # many shards, windows across them
    store = make_store(docs)
    assert len(store.manifest["shards"]) > 10
    out = _all(pack_documents(store, seq_len, EOS))
    ids, doc_ids = _in_memory_packing(docs, seq_len)
    assert out["input_ids"].tolist() == ids.tolist()
    assert out["doc_ids"].tolist() == doc_ids.tolist()


def test_rows_in_any_order_are_the_same_windows(make_store):
    docs = [list(range(1, n)) for n in (5, 40, 3, 17, 60)]
    windows = pack_documents(make_store(docs), 8, EOS)
    every = _all(windows)["input_ids"]
    index = torch.tensor([7, 0, 3, 3, 11])
    assert torch.equal(windows.rows(index, epoch=5)["input_ids"], every[index])


def test_memory_holds_the_document_index_not_the_corpus(make_store):
    """Packing 4M tokens in memory took ~60 bytes a token (240 MB); reading windows from the
    store allocates the index (16 bytes a document) and the rows read, whatever the size."""
    rng = np.random.default_rng(0)
    docs = [rng.integers(1, 30000, size=2000) for _ in range(2000)]
    store = make_store(docs)
    tracemalloc.start()
    windows = pack_documents(store, 256, EOS)
    for start in range(0, 160, 16):
        windows.rows(torch.arange(start, start + 16))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(windows) == (4_000_000 + 2000) // 256
    assert peak < 2_000_000, peak  # 2000 docs x 16 B + rows; the corpus would be > 30 MB


def test_reading_windows_is_fast(make_store):
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 400, size=5000)
    store = make_store([rng.integers(1, 30000, size=int(n)) for n in lengths])
    windows = pack_documents(store, 256, EOS)
    start = time.perf_counter()
    for batch in torch.randperm(len(windows))[:512].split(16):
        windows.rows(batch)
    assert time.perf_counter() - start < 1.0  # 32 micro-batches of 16 x 256, random order
