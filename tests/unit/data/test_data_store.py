"""Token stores: documents round-trip through memory-mapped shards, uint16 or uint32 by the
vocabulary, committed atomically (whole or absent), damaged ones refused in one line or (where
building is allowed) said in one warning and removed for the rebuild."""

import json
import mmap
import os
import pickle
import socket

import numpy as np
import pytest

from llmtune.data import store as store_module
from llmtune.data.store import (
    StoreDamaged,
    StoreWriter,
    TokenStore,
    open_store,
    store_dtype,
    store_key,
)
from llmtune.errors import DataError


def _docs(n: int = 50, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 60_000, size=int(k)) for k in rng.integers(0, 120, size=n)]


def test_documents_round_trip_across_shards(make_store, monkeypatch):
    monkeypatch.setattr(store_module, "SHARD_TOKENS", 150)
    docs = [*_docs(), np.arange(400) % 50_000, np.zeros(0, dtype=np.int64)]  # > a shard; empty
    store = make_store(docs)
    assert len(store.manifest["shards"]) > 5
    assert store.n_docs == len(docs) and store.n_tokens == sum(len(d) for d in docs)
    for i, doc in enumerate(docs):
        assert store.document(i).tolist() == list(doc)
    flat = np.concatenate(docs)
    assert store.tokens(100, 900).tolist() == flat[100:900].tolist()  # spans shards
    assert store.doc_lengths().tolist() == [len(d) for d in docs]


def test_dtype_follows_the_vocabulary(make_store):
    assert store_dtype(65_536) == np.uint16 and store_dtype(65_537) == np.uint32
    small = make_store([[1, 65_535]], vocab_size=50_000, key="small")
    large = make_store([[1, 70_000]], vocab_size=100_000, key="large")
    assert small.dtype == np.uint16 and small.document(0).tolist() == [1, 65_535]
    assert large.dtype == np.uint32 and large.document(0).tolist() == [1, 70_000]
    tokens = small.path / "tokens-00000.bin"
    assert tokens.stat().st_size == 2 * 2  # two bytes a token, no header


def test_an_interrupted_writer_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), StoreWriter(tmp_path, "k", np.uint16, {}) as writer:
        writer.add(np.arange(10), np.array([4, 6]))
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == [] and open_store(tmp_path, "k") is None


def test_the_first_commit_wins_and_the_second_is_discarded(tmp_path):
    first = StoreWriter(tmp_path, "k", np.uint16, {"who": 1})
    second = StoreWriter(tmp_path, "k", np.uint16, {"who": 2})  # a concurrent builder
    for writer in (first, second):
        writer.add(np.arange(5), np.array([5]))
    assert first.commit().manifest["who"] == 1
    assert second.commit().manifest["who"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["k"]


def test_an_abandoned_half_written_store_is_removed(tmp_path):
    dead = tmp_path / f".building-k-{socket.gethostname()}-999999999-0badc0de"
    dead.mkdir(parents=True)
    (dead / "tokens-00000.bin").write_bytes(b"\0" * 10)
    StoreWriter(tmp_path, "k", np.uint16, {}).commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]


def test_a_damaged_store_is_refused_in_one_line(make_store):
    store = make_store(_docs())
    tokens = store.path / "tokens-00000.bin"
    os.truncate(tokens, tokens.stat().st_size - 2)
    with pytest.raises(DataError, match=r"token store .* is damaged \(tokens-00000.bin") as info:
        TokenStore(store.path).tokens(0, 5)
    assert "\n" not in str(info.value) and "delete the folder" in str(info.value)
    manifest = json.loads((store.path / "manifest.json").read_text())
    (store.path / "manifest.json").write_text(json.dumps({**manifest, "version": 99}))
    with pytest.raises(DataError, match="format version 99"):
        TokenStore(store.path)


@pytest.mark.parametrize(
    ("damage", "what"),
    [
        (lambda p: (p / "tokens-00000.bin").unlink(), "tokens-00000.bin does not match"),
        (lambda p: (p / "offsets-00000.npy").write_bytes(b"junk"), "cannot read offsets-00000"),
        (lambda p: (p / "manifest.json").write_text("{"), "cannot read manifest.json"),
        (lambda p: (p / "manifest.json").unlink(), "cannot read manifest.json"),
        (lambda p: (p / "manifest.json").write_text('{"version": 1}'), "lacks fields"),
    ],
)
def test_open_store_finds_damage_and_repairs_by_removing(make_store, capsys, damage, what):
    store = make_store(_docs())
    damage(store.path)
    with pytest.raises(StoreDamaged, match=what):
        open_store(store.path.parent, store.path.name)
    assert store.path.exists()  # refused, nothing removed
    assert open_store(store.path.parent, store.path.name, repair=True) is None
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"warning: the token store {store.path} is damaged (") and what in out
    assert out.endswith("building it again") and "\n" not in out
    assert list(store.path.parent.iterdir()) == []  # its name is free for the rebuild


def test_a_sound_store_opens(make_store):
    store = make_store(_docs())
    found = open_store(store.path.parent, store.path.name, repair=True)
    assert found is not None and found.document(2).tolist() == store.document(2).tolist()


def test_a_store_pickles_as_its_path(make_store):
    store = make_store(_docs(200))
    store.tokens(0, 10)  # maps opened
    data = pickle.dumps(store)
    assert len(data) < 1000
    assert pickle.loads(data).document(3).tolist() == store.document(3).tolist()


def test_the_key_names_text_and_tokenizer():
    assert store_key("a", "t") == store_key("a", "t")
    assert len({store_key("a", "t"), store_key("b", "t"), store_key("a", "u")}) == 3


def test_mapped_pages_are_handed_back_every_so_many_reads(make_store, monkeypatch):
    """A long run touches every page of a memory map; without handing them back its resident
    set would grow to the store's size (the memmap "leak" nanoGPT works around)."""

    class Recorder:
        def __init__(self):
            self.advice = []

        def madvise(self, advice):
            self.advice.append(advice)

    monkeypatch.setattr(store_module, "RELEASE_EVERY", 10)
    store = make_store(_docs())
    store.tokens(0, 5)
    store._mmaps = [Recorder(), Recorder()]
    for _ in range(25):
        store.tokens(0, 5)
    assert [len(r.advice) for r in store._mmaps] == [2, 2]  # at reads 10 and 20
    assert store._mmaps[0].advice[0] == mmap.MADV_DONTNEED
