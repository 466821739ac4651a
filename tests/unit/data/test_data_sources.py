"""Corpus loading: every file format, cleaning, errors naming the key, validation carve-out."""

import json
from pathlib import Path

import pandas as pd
import pytest

from llmtune.config.schema import DataConfig, FilesData, HubData
from llmtune.data.builtin import builtin_documents
from llmtune.data.corpus import load_corpus
from llmtune.data.sources import cache_root, carve_validation
from llmtune.errors import DataError

# Raw documents: surrounding whitespace, one too short for min_chars=3, one exact duplicate.
RAW = ["  alpha one  ", "beta two", "xy", "gamma three\t", "beta two", "delta four"]
CLEAN = ["alpha one", "beta two", "gamma three", "delta four"]  # with min_chars=3, dedupe


def _write(path: Path, docs: list[str], column: str = "content") -> None:
    rows = [{"id": i, column: d} for i, d in enumerate(docs)]
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    elif path.suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(path)
    else:
        raise AssertionError(path)


def _files_cfg(train: str, **kw) -> DataConfig:
    kw.setdefault("validation", train)
    return FilesData(train=train, **kw)


@pytest.mark.parametrize("ext", [".jsonl", ".json", ".csv", ".parquet"])
def test_structured_formats_load_and_clean(tmp_path, ext):
    _write(tmp_path / f"corpus{ext}", RAW)
    cfg = _files_cfg(f"corpus{ext}", text_column="content", min_chars=3, dedupe=True)
    splits = load_corpus(cfg, seed=0)
    assert splits["train"].column_names == ["text"]
    assert list(splits["train"]["text"]) == CLEAN


def test_without_dedupe_duplicates_stay(tmp_path):
    _write(tmp_path / "c.jsonl", RAW)
    cfg = _files_cfg("c.jsonl", text_column="content", min_chars=3)
    assert list(load_corpus(cfg, 0)["train"]["text"]).count("beta two") == 2


def test_txt_documents_are_blank_line_separated(tmp_path):
    text = "first line\nsecond line\n\n\n  doc two  \n \t \ndoc three a\ndoc three b\n\nx\n"
    (tmp_path / "a.txt").write_text(text)
    cfg = _files_cfg("a.txt", min_chars=2)
    docs = list(load_corpus(cfg, 0)["train"]["text"])
    assert docs == ["first line\nsecond line", "doc two", "doc three a\ndoc three b"]


def test_glob_and_directory_read_all_files_in_order(tmp_path):
    (tmp_path / "d").mkdir()
    for i in range(3):
        (tmp_path / "d" / f"part{i}.txt").write_text(f"doc {i}a\n\ndoc {i}b\n")
    expected = [f"doc {i}{c}" for i in range(3) for c in "ab"]
    assert list(load_corpus(_files_cfg("d/*.txt"), 0)["train"]["text"]) == expected
    assert list(load_corpus(_files_cfg("d"), 0)["train"]["text"]) == expected


def test_max_docs_caps_the_split(tmp_path):
    _write(tmp_path / "c.jsonl", CLEAN)
    cfg = _files_cfg("c.jsonl", text_column="content", max_docs=2)
    assert list(load_corpus(cfg, 0)["train"]["text"]) == CLEAN[:2]


def test_missing_file_names_the_key(tmp_path):
    with pytest.raises(DataError, match=r"data\.train: no files match 'nope\.txt'"):
        load_corpus(_files_cfg("nope.txt"), 0)


def test_glob_matching_nothing_names_the_key(tmp_path):
    _write(tmp_path / "c.jsonl", CLEAN)
    cfg = _files_cfg("c.jsonl", validation="val/*.jsonl", text_column="content")
    with pytest.raises(DataError, match=r"data\.validation: no files match 'val/\*\.jsonl'"):
        load_corpus(cfg, 0)


def test_missing_text_column_lists_available_columns(tmp_path):
    _write(tmp_path / "c.csv", CLEAN)
    with pytest.raises(DataError, match=r"data\.train: no column 'text'.*available columns: id, "):
        load_corpus(_files_cfg("c.csv"), 0)


def test_non_string_text_column_is_refused(tmp_path):
    _write(tmp_path / "c.jsonl", CLEAN)
    with pytest.raises(DataError, match=r"data\.train: column 'id'.*not text"):
        load_corpus(_files_cfg("c.jsonl", text_column="id"), 0)


def test_empty_after_cleaning_names_the_key(tmp_path):
    (tmp_path / "a.txt").write_text("ab\n\ncd\n")
    with pytest.raises(DataError, match=r"data\.train: 0 documents left after cleaning"):
        load_corpus(_files_cfg("a.txt", min_chars=10), 0)


def test_empty_file_is_a_data_error(tmp_path):
    (tmp_path / "a.txt").write_text("")
    with pytest.raises(DataError, match=r"data\.train"):
        load_corpus(_files_cfg("a.txt"), 0)


def test_unsupported_and_mixed_formats(tmp_path):
    (tmp_path / "a.docx").write_text("x")
    with pytest.raises(DataError, match=r"data\.train: unsupported file type"):
        load_corpus(_files_cfg("a.docx"), 0)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.txt").write_text("hello")
    _write(tmp_path / "m" / "b.csv", CLEAN)
    with pytest.raises(DataError, match=r"data\.train: mixes file types"):
        load_corpus(_files_cfg("m/*"), 0)


def test_corrupt_file_is_one_line_data_error(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"not a parquet file at all")
    with pytest.raises(DataError, match=r"data\.train: cannot read") as info:
        load_corpus(_files_cfg("bad.parquet"), 0)
    assert "\n" not in str(info.value)


def test_validation_carve_out_is_deterministic_and_disjoint(tmp_path):
    docs = [f"document number {i}" for i in range(100)]
    _write(tmp_path / "c.jsonl", docs)
    cfg = FilesData(train="c.jsonl", text_column="content")
    a, b = load_corpus(cfg, seed=1), load_corpus(cfg, seed=1)
    train, val = list(a["train"]["text"]), list(a["validation"]["text"])
    assert (train, val) == (list(b["train"]["text"]), list(b["validation"]["text"]))
    assert len(val) == 5 and not set(train) & set(val)
    assert sorted(train + val) == sorted(docs)
    assert list(load_corpus(cfg, seed=2)["validation"]["text"]) != val


def test_carve_out_takes_at_least_one_and_needs_two(tmp_path):
    _write(tmp_path / "c.jsonl", ["one doc here", "two doc here"])
    cfg = FilesData(train="c.jsonl", text_column="content")
    splits = load_corpus(cfg, 0)
    assert (len(splits["train"]), len(splits["validation"])) == (1, 1)
    single = splits["train"]
    with pytest.raises(DataError, match=r"data\.train: only 1 document"):
        carve_validation(single, 0.05, 0)


def test_test_split_is_loaded_when_set(tmp_path):
    _write(tmp_path / "tr.jsonl", CLEAN)
    _write(tmp_path / "te.jsonl", ["held out text"])
    cfg = FilesData(train="tr.jsonl", test="te.jsonl", text_column="content")
    splits = load_corpus(cfg, 0)
    assert set(splits) == {"train", "validation", "test"}
    assert list(splits["test"]["text"]) == ["held out text"]


def test_cache_root_precedence(tmp_path, monkeypatch):
    assert cache_root(DataConfig(cache_dir=str(tmp_path / "x"))) == tmp_path / "x"
    assert cache_root(DataConfig()) == tmp_path / "cache"  # LLMTUNE_CACHE from conftest
    monkeypatch.delenv("LLMTUNE_CACHE")
    assert cache_root(DataConfig()) == Path.home() / ".cache" / "llmtune"


def test_builtin_corpus_loads_offline():
    splits = load_corpus(DataConfig(source="builtin"), seed=0)
    n_train, n_val = len(splits["train"]), len(splits["validation"])
    assert n_train + n_val == len(builtin_documents()) > 100
    assert n_val >= 1
    text = "\n".join(splits["train"]["text"])
    assert "assert" in text and len(text) > 300_000


def test_hub_offline_gives_one_line_error(monkeypatch):
    import datasets
    import huggingface_hub

    # Belt and braces: the flags may have been read before conftest set the env vars.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True, raising=False)
    cfg = HubData(name="someone/not-cached-dataset")
    with pytest.raises(DataError, match=r"data\.name=someone/not-cached-dataset: cannot reach"):
        load_corpus(cfg, 0)


def test_unknown_source_is_refused():
    with pytest.raises(DataError, match=r"data\.source='ftp'"):
        load_corpus(DataConfig(source="ftp"), 0)
