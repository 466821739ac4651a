"""Corpus splits: streamed in batches from `datasets`' Arrow files, fingerprinted without
reading the text, carved exactly as before, counted once."""

import json
import os

import datasets
import pytest

from llmtune.config.schema import FilesData, MixData, MixSourceConfig
from llmtune.data import corpus
from llmtune.data.corpus import is_validation, mix_configs, open_corpus
from llmtune.data.sources import carve_validation, iter_raw_batches, raw_text


def _jsonl(path, docs):
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


def _no_reading(monkeypatch):
    def refuse(*args):
        raise AssertionError("the text was read")

    monkeypatch.setattr(corpus, "raw_text", refuse)


def test_fingerprints_need_no_reading_and_follow_the_files(tmp_path, monkeypatch):
    path = _jsonl(tmp_path / "c.jsonl", [f"document {i}" for i in range(40)])
    cfg = FilesData(train=str(path))
    before = {k: s.fingerprint for k, s in open_corpus(cfg, 0).items()}
    _no_reading(monkeypatch)
    assert {k: s.fingerprint for k, s in open_corpus(cfg, 0).items()} == before
    assert before["train"] != before["validation"]
    assert open_corpus(cfg, 1)["train"].fingerprint != before["train"]  # another carve
    other = FilesData(train=str(path), min_chars=5)
    assert open_corpus(other, 0)["train"].fingerprint != before["train"]  # other cleaning
    _jsonl(path, [f"document {i}" for i in range(41)])
    os.utime(path, ns=(1, 1))
    assert open_corpus(cfg, 0)["train"].fingerprint != before["train"]  # the file changed


def test_splits_are_carved_exactly_as_carve_validation_does(tmp_path):
    docs = [f"document number {i}" for i in range(100)]
    path = _jsonl(tmp_path / "c.jsonl", docs)
    splits = open_corpus(FilesData(train=str(path)), seed=5)
    got = {k: [d for b in s.batches() for d in b] for k, s in splits.items()}
    train, val = carve_validation(datasets.Dataset.from_dict({"text": docs}), 0.05, 5)
    assert got == {"train": list(train["text"]), "validation": list(val["text"])}
    assert splits["train"].n_docs() == 95 and splits["validation"].n_docs() == 5


def test_arrow_files_are_read_in_batches(tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", [f"d{i}" for i in range(2500)])
    raw = raw_text(FilesData(train=str(path)), "train")
    assert raw.table.cache_files  # read from `datasets`' Arrow cache file, batch by batch
    batches = list(iter_raw_batches(raw, 1000))
    assert [t for b in batches for t in b] == [f"d{i}" for i in range(2500)]
    assert max(len(b) for b in batches) <= 1000


def test_the_document_count_is_remembered(tmp_path, monkeypatch):
    path = _jsonl(tmp_path / "c.jsonl", [f"document {i}" for i in range(30)])
    cfg = FilesData(train=str(path))
    assert open_corpus(cfg, 0)["train"].n_docs() == 28
    _no_reading(monkeypatch)
    assert open_corpus(cfg, 0)["validation"].n_docs() == 2  # counted once, in the cache


def test_a_stream_is_split_by_a_hash_of_each_text():
    docs = [f"streamed document {i}" for i in range(4000)]
    held = [d for d in docs if is_validation(d, 0.05)]
    assert 150 < len(held) < 250
    assert held == [d for d in docs if is_validation(d, 0.05)]  # the same on every rank


def test_mix_entries_become_one_corpus_each():
    cfg = MixData(
        min_chars=3,
        mix={
            "wiki": MixSourceConfig(train="w.jsonl", weight=3.0, text_column="body"),
            "code": MixSourceConfig(train="c.txt"),
        },
    )
    (name, weight, wiki), (_, _, code) = mix_configs(cfg)
    assert (name, weight, wiki.source, wiki.train, wiki.text_column) == (
        "wiki",
        3.0,
        "files",
        "w.jsonl",
        "body",
    )
    assert code.text_column == "text" and code.min_chars == 3 and not code.mix


def test_zero_documents_after_cleaning_is_one_line(tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", ["a", "b"])
    split = open_corpus(FilesData(train=str(path), min_chars=5), 0)["train"]
    with pytest.raises(Exception, match=r"data\.train: 0 documents left after cleaning"):
        split.n_docs()
