"""Explain why a data file could not be read: the file, the line and what to do.

Runs only after a reader failed, so the happy path never pays for a second pass.
"""

from __future__ import annotations

import json
from pathlib import Path


def _first_bad_json_line(path: Path) -> str | None:
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if raw.strip():
                try:
                    json.loads(raw)
                except ValueError as exc:
                    return f"line {number} is not valid JSON ({str(exc).split(':')[0]})"
    return None


def _first_non_utf8_line(path: Path) -> str | None:
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return (
                    f"line {number} is not UTF-8 text; convert the file, e.g. "
                    f"iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix}"
                )
    return None


def explain(path: Path) -> str | None:
    """The first problem found in an uncompressed text-based data file, or None."""
    if not path.is_file() or path.suffix in (".parquet", ".gz", ".bz2", ".xz", ".zst"):
        return None
    if path.stat().st_size == 0 or not path.read_bytes().strip():
        return "the file is empty"
    problem = _first_non_utf8_line(path)
    if problem is None and path.suffix == ".jsonl":
        problem = _first_bad_json_line(path)
    if problem is None and path.suffix == ".json":
        try:
            json.loads(path.read_bytes())
        except ValueError:
            problem = _first_bad_json_line(path)  # not one document: maybe JSON Lines
    return problem
