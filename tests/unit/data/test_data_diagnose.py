"""Unreadable data files are reported with the file, the line and what to do."""

from __future__ import annotations

import pytest

from llmtune.config.schema import FilesData
from llmtune.data import load_corpus
from llmtune.errors import DataError


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        (
            "bad.jsonl",
            b'{"text": "fine"}\n{"text": "broken\n{"text": "ok"}\n',
            "line 2 is not valid JSON",
        ),
        ("bad.txt", b"fine line\n\ncaf\xe9 au lait\n", "line 3 is not UTF-8 text"),
        ("bad.csv", b"text\nfine\ncaf\xe9\n", "line 3 is not UTF-8 text"),
        ("empty.jsonl", b"", "the file is empty"),
        ("blank.txt", b"\n\n  \n", "0 documents left after cleaning"),
    ],
)
def test_unreadable_file_names_file_and_line(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    cfg = FilesData(train=str(path), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError) as info:
        load_corpus(cfg, seed=0)
    message = str(info.value)
    assert message.startswith("data.train: ") and expected in message
    assert name in message or "documents left" in message
    assert "\n" not in message
