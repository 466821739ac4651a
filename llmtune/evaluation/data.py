"""Evaluation inputs: prompts (lists or files), the test split as text documents (LM) or as
rows of labelled columns (zero-shot classification), and few-shot rows from data.train."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmtune.config.schema import DataConfig
from llmtune.data.sources import read_files
from llmtune.errors import DataError

_PATH_SUFFIXES = (".txt", ".jsonl", ".json", ".csv", ".tsv", ".md")


class PromptsError(DataError):
    """The prompts= value names a file that cannot be read, or holds no prompt."""


def read_prompts(values: tuple[str, ...]) -> list[str]:
    """Prompts from `prompts=`: an existing file gives one prompt per non-empty line; any
    other value is a prompt itself, unless it is the only value and looks like a path."""
    prompts: list[str] = []
    for value in values:
        path = Path(value).expanduser()
        if path.is_file():
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise PromptsError(f"prompts={value}: cannot read the file ({exc})") from None
            prompts.extend(line.rstrip("\r") for line in lines if line.strip())
        elif len(values) == 1 and ("/" in value or value.lower().endswith(_PATH_SUFFIXES)):
            raise PromptsError(
                f"prompts={value}: no such file; give an existing file of one prompt per line "
                "or a list like prompts='[Once upon a time,Hello]'"
            )
        else:
            prompts.append(value)
    if not prompts:
        raise PromptsError(f"prompts={','.join(values)}: no prompt found (the file is empty)")
    return prompts


def column_names(cfg: DataConfig, key: str) -> list[str]:
    """Columns of the files of data.<key> (tells a labelled split from one to predict)."""
    return read_files(cfg, key, tables_only=True)[0].column_names


def labelled_rows(cfg: DataConfig, key: str) -> tuple[list[dict[str, Any]], bool]:
    """Rows {"text", "text_pair"?, "label"?} of data.<key>; the flag says whether the
    label column is present (absent: predict only)."""
    ds = read_files(cfg, key, tables_only=True)[0]
    columns = {"text": cfg.text_column, "text_pair": cfg.text_pair_column}
    for name, column in columns.items():
        if column and column not in ds.column_names:
            raise DataError(
                f"data.{key}: no column '{column}' (available: {', '.join(ds.column_names)}); "
                f"set data.{name}_column"
            )
    has_labels = cfg.label_column in ds.column_names
    if cfg.max_docs:
        ds = ds.select(range(min(cfg.max_docs, len(ds))))
    rows = []
    for raw in ds:
        row = {name: raw[column] for name, column in columns.items() if column}
        if has_labels:
            row["label"] = raw[cfg.label_column]
        rows.append(row)
    return rows, has_labels
