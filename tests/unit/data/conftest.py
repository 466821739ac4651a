"""Shared fixtures for the data tests: no network, every cache inside tmp_path."""

import os

# Set before `datasets`/`huggingface_hub` are imported, since both read these at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("LLMTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def make_store(tmp_path):
    """make_store(docs, vocab_size=100_000, key="store"): a committed token store of `docs`
    (lists of token ids) under tmp_path/stores."""
    import numpy as np

    from llmtune.data.store import StoreWriter, store_dtype

    def make(docs, vocab_size: int = 100_000, key: str = "store"):
        writer = StoreWriter(tmp_path / "stores", key, store_dtype(vocab_size), {})
        lengths = np.array([len(d) for d in docs], dtype=np.int64)
        flat = np.concatenate([np.asarray(d, dtype=np.int64) for d in docs] or [np.zeros(0)])
        writer.add(flat, lengths)
        return writer.commit()

    return make


@pytest.fixture
def text_split(tmp_path):
    """text_split(texts, name="corpus.jsonl"): a JSONL file of `texts`, whole, as a TextSplit."""
    import json

    from llmtune.config.schema import FilesData
    from llmtune.data.corpus import open_corpus

    def make(texts, name: str = "corpus.jsonl"):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        cfg = FilesData(train=str(path), validation=str(path))
        return open_corpus(cfg, 0)["train"]

    return make
