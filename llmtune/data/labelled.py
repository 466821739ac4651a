"""Labelled data for fine-tuning: multi-column JSONL/CSV/parquet splits, label vocabularies,
and task encodings (sentence (pair) classification, word tagging, instruction/response)."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import datasets
import torch
from tokenizers import Tokenizer

from llmtune.config.schema import DataConfig
from llmtune.data.sources import _describe, _resolve_files, carve_validation, read_files
from llmtune.errors import DataError

IGNORE = -100  # target of positions without a label (cross-entropy's ignore_index)


# Each split keeps the 1-based row number its file(s) gave each example, so an error about
# one example can name it after rows with empty values were skipped or validation carved out.
ROW_COLUMN = "__llmtune_row__"


@dataclass
class Encoded:
    """Variable-length token rows of one split, and which examples exceeded max_seq_len."""

    rows: dict[str, list]  # input_ids, token_type_ids, labels, ...: one entry per example
    # split position -> full length of each example longer than max_seq_len (cut to it)
    overlong: dict[int, int] = field(default_factory=dict)
    n_dropped: int = 0  # examples with nothing left to learn from (e.g. a response cut away)

    @property
    def n_truncated(self) -> int:
        return len(self.overlong)


def load_labelled(
    cfg: DataConfig, columns: Sequence[str], seed: int
) -> dict[str, datasets.Dataset]:
    """Train and validation splits holding `columns` (validation carved out of train if unset)."""
    if cfg.source != "files":
        raise DataError(
            f"data.source={cfg.source}: labelled fine-tuning data must be local files; "
            "use data=files data.train=<path>"
        )
    splits = {"train": load_table(cfg, "train", columns)}
    if cfg.validation:
        splits["validation"] = load_table(cfg, "validation", columns)
    else:
        splits["train"], splits["validation"] = carve_validation(
            splits["train"], cfg.validation_fraction, seed
        )
    return splits


def load_table(cfg: DataConfig, key: str, columns: Sequence[str]) -> datasets.Dataset:
    """One split (`data.<key>`) with exactly `columns`; rows missing a value are dropped."""
    ds, files, _ = read_files(cfg, key, tables_only=True)
    for column in columns:
        if column not in ds.column_names:
            setting = _setting_for(cfg, column)
            raise DataError(
                f"data.{key}: no column '{column}' in {_describe(files)} (columns: "
                f"{', '.join(ds.column_names)}); set {setting}"
            )
    ds = ds.select_columns(list(columns))
    ds = ds.add_column(ROW_COLUMN, list(range(1, len(ds) + 1)))
    n_rows = len(ds)
    ds = ds.filter(lambda row: all(row[c] is not None for c in columns), desc=f"checking {key}")
    if len(ds) < n_rows:  # said, not silent: a null label is often a bug upstream
        kept = set(ds[ROW_COLUMN])
        first = next(r for r in range(1, n_rows + 1) if r not in kept)
        print(
            f"warning: data.{key}: skipped {n_rows - len(ds)} of {n_rows} rows with no value "
            f"(null) in {' or '.join(columns)}; the first is row {first} of {_describe(files)}"
        )
    if cfg.max_docs and len(ds) > cfg.max_docs:
        ds = ds.select(range(cfg.max_docs))
    if len(ds) == 0:
        raise DataError(f"data.{key}: no rows with all of {', '.join(columns)}; check the file")
    return ds


def _setting_for(cfg: DataConfig, column: str) -> str:
    """The data.* key that named `column`, so the error says what to change."""
    for key in ("text_column", "text_pair_column", "label_column", "tokens_column"):
        if getattr(cfg, key) == column:
            return f"data.{key}"
    for key in ("tags_column", "instruction_column", "response_column", "prompt_column"):
        if getattr(cfg, key) == column:
            return f"data.{key}"
    for key in ("chosen_column", "rejected_column"):
        if getattr(cfg, key) == column:
            return f"data.{key}"
    return "the data.*_column keys"


def row_of(cfg: DataConfig, key: str, split: datasets.Dataset, position: int) -> str:
    """'row 7 of 'x.jsonl'': the row (in a JSONL file, the line) the file(s) gave the example
    at `position` of a split, also for a validation split carved out of train."""
    source = key if getattr(cfg, key, "") else "train"
    row = split[position][ROW_COLUMN] if ROW_COLUMN in split.column_names else position + 1
    return f"row {row} of {_describe(_resolve_files(getattr(cfg, source), source))}"


def scalar_labels(split: datasets.Dataset, cfg: DataConfig, key: str, column: str) -> list:
    """The values of a label column; a list or mapping in it is a one-line error naming the row
    (one example has one label)."""
    values = split[column]
    for i, value in enumerate(values):
        if isinstance(value, list | dict):
            raise DataError(
                f"data.{key}: {row_of(cfg, key, split, i)} has a {type(value).__name__} in "
                f"'{column}'; each row needs one label (a string or a number)"
            )
    return values


def class_names(values: Iterable, column: str) -> list:
    """The classes of a training split (label_names); fewer than two is an error."""
    names = label_names(values)
    if len(names) < 2:
        shown = repr(names[0]) if names else "none"
        raise DataError(
            f"data.train: every row of '{column}' has the same label ({shown}); a classifier "
            "needs examples of at least two classes"
        )
    return names


def label_names(values: Iterable) -> list:
    """Sorted distinct labels (numbers numerically, strings alphabetically); index = label id."""
    distinct = set(values)
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in distinct):
        return sorted(distinct)
    return sorted(str(v) for v in distinct)


def label_ids(values: Iterable, names: Sequence, key: str) -> list[int]:
    """Map labels to ids; labels the training split never had are a one-line DataError."""
    index = {name: i for i, name in enumerate(names)}
    # "1" in a test file and 1 in the training file are one label, as CSV and JSONL differ
    as_text = {str(name): i for i, name in enumerate(names)}
    as_str = isinstance(names[0], str) if names else False
    ids, unknown = [], []
    for value in values:
        value = str(value) if as_str else value
        if value in index:
            ids.append(index[value])
        elif isinstance(value, str | int | float) and str(value) in as_text:
            ids.append(as_text[str(value)])
        else:
            unknown.append(value)
    if unknown:
        shown = ", ".join(repr(v) for v in sorted(set(map(str, unknown)))[:5])
        raise DataError(
            f"data.{key}: label(s) {shown} do not occur in data.train; the model can only "
            "predict labels it was trained on (add them to train or drop those rows)"
        )
    return ids


def as_words(value) -> list:
    """A list column from JSON/parquet, or its CSV spelling ("['a', 'b']" or "a b")."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return list(ast.literal_eval(text))
            except (ValueError, SyntaxError):
                pass
        return text.split()
    return list(value)


def truncating(tok: Tokenizer, max_len: int | None) -> Tokenizer:
    """A copy of `tok` that cuts encodings to max_len, or never with None (the shared
    tokenizer stays untouched)."""
    copy = Tokenizer.from_str(tok.to_str())
    copy.no_padding()
    if max_len is None:
        copy.no_truncation()
    else:
        copy.enable_truncation(max_len)
    return copy


def _full_lengths(tok: Tokenizer, inputs: list, encodings: list, pretokenized: bool) -> dict:
    """Untruncated lengths of the inputs whose encodings were cut (only those re-encoded)."""
    cut = [i for i, e in enumerate(encodings) if e.overflowing]
    if not cut:
        return {}
    whole = truncating(tok, None)
    full = whole.encode_batch([inputs[i] for i in cut], is_pretokenized=pretokenized)
    return {i: len(e.ids) for i, e in zip(cut, full)}


def encode_texts(
    tok: Tokenizer, texts: list[str], pairs: list[str] | None, max_len: int
) -> Encoded:
    """Single texts or (text, pair) with the tokenizer's template ([CLS] a [SEP] b [SEP])."""
    cut = truncating(tok, max_len)
    inputs = texts if pairs is None else list(zip(texts, pairs))
    encodings = cut.encode_batch(inputs)
    rows = {
        "input_ids": [e.ids for e in encodings],
        "token_type_ids": [e.type_ids for e in encodings],
    }
    return Encoded(rows, _full_lengths(tok, inputs, encodings, False))


def encode_tagged(
    tok: Tokenizer, words: list[list[str]], tags: list[list[int]], max_len: int
) -> Encoded:
    """Word-level tags on sub-tokens: the first piece of each word carries its tag, the
    other pieces and the special tokens carry IGNORE (so each word counts once)."""
    cut = truncating(tok, max_len)
    inputs = [[str(w) for w in ws] for ws in words]
    encodings = cut.encode_batch(inputs, is_pretokenized=True)
    input_ids, type_ids, labels = [], [], []
    for enc, row_tags in zip(encodings, tags):
        previous, row = None, []
        for word in enc.word_ids:
            row.append(row_tags[word] if word is not None and word != previous else IGNORE)
            previous = word
        input_ids.append(enc.ids)
        type_ids.append(enc.type_ids)
        labels.append(row)
    rows = {"input_ids": input_ids, "token_type_ids": type_ids, "labels": labels}
    return Encoded(rows, _full_lengths(tok, inputs, encodings, True))


def token_ids(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens."""
    return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]


def instruction_rows(
    prompt_ids: list[list[int]], response_ids: list[list[int]], eos_id: int, max_len: int
) -> list[tuple[list[int], list[int], int]]:
    """(ids, targets, full length) of each prompt + response + EOS, cut to max_len; targets
    only on the response and EOS (prompt tokens IGNORE)."""
    rows = []
    for p, r in zip(prompt_ids, response_ids):
        ids, targets = p + r + [eos_id], [IGNORE] * len(p) + r + [eos_id]
        rows.append((ids[:max_len], targets[:max_len], len(ids)))
    return rows


def no_target(targets: list[int]) -> bool:
    """True when the prompt filled the window: no response token is left to learn."""
    return all(t == IGNORE for t in targets[1:])


def encode_instructions(
    tok: Tokenizer, prompts: list[str], responses: list[str], eos_id: int, max_len: int
) -> Encoded:
    """prompt + response + EOS; targets only on the response and EOS (prompt tokens IGNORE)."""
    rows = instruction_rows(token_ids(tok, prompts), token_ids(tok, responses), eos_id, max_len)
    input_ids, labels, overlong, dropped = [], [], {}, 0
    for i, (ids, targets, length) in enumerate(rows):
        if length > max_len:
            overlong[i] = length
        if no_target(targets):
            dropped += 1
            continue
        input_ids.append(ids)
        labels.append(targets)
    return Encoded({"input_ids": input_ids, "labels": labels}, overlong, dropped)


def pad_rows(rows: list[list[int]], width: int, value: int) -> torch.Tensor:
    """Right-pad variable-length rows into a [N, width] int64 tensor."""
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row[:width], dtype=torch.long)
    return out


def padded_batch(encoded: Encoded, pad_id: int) -> dict[str, torch.Tensor]:
    """Tensors of an encoded split: token rows padded to the longest, plus attention_mask.

    Per-token `labels` pad with IGNORE; per-example labels (ints) become a [N] tensor;
    packed rows' `doc_ids` pad with each row's last document id.
    """
    ids = encoded.rows["input_ids"]
    width = max((len(r) for r in ids), default=1)
    out = {
        "input_ids": pad_rows(ids, width, pad_id),
        "attention_mask": pad_rows([[1] * len(r) for r in ids], width, 0),
    }
    if "token_type_ids" in encoded.rows:
        out["token_type_ids"] = pad_rows(encoded.rows["token_type_ids"], width, 0)
    if "doc_ids" in encoded.rows:  # packed rows: padding joins the row's last example, which
        # it follows causally, so a row holding one example keeps the fused causal kernel
        docs = [r + r[-1:] * (width - len(r)) for r in encoded.rows["doc_ids"]]
        out["doc_ids"] = pad_rows(docs, width, 0)
    for key in encoded.rows:  # more texts per example (contrastive pos_/neg_ views)
        if key.endswith("_input_ids"):
            rows, view = encoded.rows[key], key.removesuffix("input_ids")
            view_width = max((len(r) for r in rows), default=1)
            out[key] = pad_rows(rows, view_width, pad_id)
            out[f"{view}attention_mask"] = pad_rows([[1] * len(r) for r in rows], view_width, 0)
    labels = encoded.rows.get("labels")
    if labels is not None:
        if labels and isinstance(labels[0], list):
            out["labels"] = pad_rows(labels, width, IGNORE)
        else:
            out["labels"] = torch.tensor(labels, dtype=torch.long)
    return out
