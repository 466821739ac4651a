"""Task objectives on labelled data: label vocabularies, first-sub-token tags, SFT targets."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer

from llmtune.config.schema import FilesData
from llmtune.data import tokenizer_info, train_tokenizer
from llmtune.data.labelled import IGNORE, label_ids, label_names, load_labelled, padded_batch
from llmtune.errors import DataError
from llmtune.objectives import build_objective
from llmtune.objectives.seq_cls import SeqClsConfig
from llmtune.objectives.sft import SFTConfig
from llmtune.objectives.token_cls import TokenClsConfig
from tests.conftest import make_documents

DOCS = make_documents(40)


@pytest.fixture(scope="module")
def wordpiece() -> Tokenizer:
    return train_tokenizer(DOCS, "wordpiece", 300, 1, True)


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return train_tokenizer(DOCS, "bpe", 300, 1, True)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_string_and_integer_labels_map_to_sorted_ids():
    assert label_names(["pos", "neg", "pos", "neutral"]) == ["neg", "neutral", "pos"]
    assert label_names([2, 0, 1, 10]) == [0, 1, 2, 10]
    assert label_ids(["pos", "neg"], ["neg", "pos"], "train") == [1, 0]
    with pytest.raises(DataError, match="data.validation: label.*'meh'.*data.train"):
        label_ids(["pos", "meh"], ["neg", "pos"], "validation")


def test_seq_cls_encodes_pairs_with_token_types_and_counts_truncation(tmp_path, wordpiece):
    rows = [
        {"a": "the river", "b": "a city " * 30, "y": "yes"},
        {"a": "blue", "b": "red", "y": "no"},
    ]
    data = FilesData(
        source="files",
        train=_write(tmp_path / "t.jsonl", rows),
        validation=_write(tmp_path / "v.jsonl", rows),
        text_column="a",
        text_pair_column="b",
        label_column="y",
    )
    info = tokenizer_info(wordpiece, "wordpiece")
    task = build_objective(SeqClsConfig(), info, wordpiece, data, ["no", "yes"])
    split = load_labelled(data, task.columns(data), 0)["train"]
    encoded = task.encode(split, 16)
    assert encoded.n_truncated == 1 and encoded.rows["labels"] == [1, 0]
    batch = padded_batch(encoded, info.pad_id)
    assert batch["input_ids"].shape == (2, 16)
    assert batch["input_ids"][1, 0] == info.cls_id and 1 in batch["token_type_ids"][1].tolist()
    trimmed = task.prepare({k: v[1:] for k, v in batch.items()}, torch.Generator())
    assert trimmed["input_ids"].shape[1] == int(batch["attention_mask"][1].sum())


def test_unknown_validation_label_is_one_line(tmp_path, wordpiece):
    data = FilesData(
        source="files",
        train=_write(tmp_path / "t.jsonl", [{"text": "a", "label": 0}]),
        validation=_write(tmp_path / "v.jsonl", [{"text": "b", "label": 7}]),
    )
    info = tokenizer_info(wordpiece, "wordpiece")
    task = build_objective(SeqClsConfig(), info, wordpiece, data, [0])
    split = load_labelled(data, task.columns(data), 0)["validation"]
    with pytest.raises(DataError) as err:
        task.encode(split, 16, "validation")
    assert "\n" not in str(err.value) and "7" in str(err.value)


def test_token_cls_labels_the_first_sub_token_only(tmp_path, wordpiece):
    words = ["the", "gardenwindow", "river"]
    rows = [{"tokens": words, "tags": ["O", "B-x", "I-x"]}]
    data = FilesData(
        source="files",
        train=_write(tmp_path / "t.jsonl", rows * 2),
        validation=_write(tmp_path / "v.jsonl", rows),
    )
    info = tokenizer_info(wordpiece, "wordpiece")
    task = build_objective(TokenClsConfig(), info, wordpiece, data, ["B-x", "I-x", "O"])
    encoded = task.encode(load_labelled(data, task.columns(data), 0)["validation"], 32)
    ids, labels = encoded.rows["input_ids"][0], encoded.rows["labels"][0]
    pieces = [wordpiece.id_to_token(i) for i in ids]
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]"
    assert len(pieces) > 5  # "gardenwindow" (unseen) is split into several pieces
    assert [t for t in labels if t != IGNORE] == [2, 0, 1]  # one tag per word: O, B-x, I-x
    starts = [i for i, t in enumerate(labels) if t != IGNORE]
    assert pieces[starts[1]] == wordpiece.encode("gardenwindow", add_special_tokens=False).tokens[0]
    assert all(p.startswith("##") for p in pieces[starts[1] + 1 : starts[2]])


def test_token_cls_rows_must_have_one_tag_per_word(tmp_path, wordpiece):
    good = {"tokens": ["a", "b"], "tags": ["O", "B-x"]}
    data = FilesData(
        source="files",
        train=_write(tmp_path / "t.jsonl", [good, good, {"tokens": ["a", "b"], "tags": ["O"]}]),
        validation=_write(tmp_path / "v.jsonl", [good]),
    )
    task = build_objective(
        TokenClsConfig(),
        tokenizer_info(wordpiece, "wordpiece"),
        wordpiece,
        data,
        ["O"],
    )
    # the file's own line (JSONL: row 3 is line 3); main said "row 2", the split position
    with pytest.raises(DataError, match=r"row 3 of '.*t.jsonl' has 2 tokens but 1 tags"):
        task.label_values(load_labelled(data, task.columns(data), 0)["train"], data)


def test_sft_targets_only_the_response_and_appends_eos(tmp_path, bpe):
    rows = [{"instruction": "name a river", "response": "the north river"}]
    data = FilesData(
        source="files",
        train=_write(tmp_path / "t.jsonl", rows * 3),
        validation=_write(tmp_path / "v.jsonl", rows),
    )
    info = tokenizer_info(bpe, "bpe")
    task = build_objective(SFTConfig(prompt_template="Q: {instruction}\nA:"), info, bpe, data)
    encoded = task.encode(load_labelled(data, task.columns(data), 0)["validation"], 64)
    ids, labels = encoded.rows["input_ids"][0], encoded.rows["labels"][0]
    n_prompt = len(bpe.encode("Q: name a river\nA:").ids)
    assert labels[:n_prompt] == [IGNORE] * n_prompt
    assert ids[-1] == info.eos_id and labels[-1] == info.eos_id
    assert labels[n_prompt:] == ids[n_prompt:]
    assert bpe.decode(ids[n_prompt:-1]) == "the north river"
    batch = task.prepare(padded_batch(encoded, info.pad_id), torch.Generator())
    assert int(task.count(batch)["sft"]) == len(ids) - n_prompt
    short = task.encode(load_labelled(data, task.columns(data), 0)["validation"], n_prompt)
    assert short.n_dropped == 1  # the prompt fills the window: nothing left to learn
