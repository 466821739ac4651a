"""Labelled examples longer than model.max_seq_len, as data.overlong says: truncate (counted),
drop (counted) or error (naming the file, row and length) before any model is built."""

from __future__ import annotations

from collections.abc import Callable

import datasets

from llmtune.config.schema import DataConfig
from llmtune.data.labelled import Encoded, row_of
from llmtune.errors import DataError

FIX = "raise model.max_seq_len or set data.overlong=truncate|drop"


def fit_to_length(
    split: datasets.Dataset,
    encode: Callable[[datasets.Dataset], Encoded],
    cfg: DataConfig,
    key: str,
    seq_len: int,
) -> tuple[datasets.Dataset, Encoded, str]:
    """(split, its encoding, a one-line note for the user or "") under data.overlong."""
    encoded = encode(split)
    over, n = encoded.overlong, len(split)
    if not over:
        return split, encoded, ""
    if cfg.overlong == "error":
        position = min(over)
        raise DataError(
            f"data.{key}: {row_of(cfg, key, split, position)} has {over[position]} tokens, more "
            f"than model.max_seq_len={seq_len} ({len(over)} such rows); {FIX}"
        )
    if cfg.overlong == "drop":
        if len(over) == n:
            raise DataError(
                f"data.{key}: all {n} rows are longer than model.max_seq_len={seq_len}, and "
                "data.overlong=drop leaves none; raise model.max_seq_len or set "
                "data.overlong=truncate"
            )
        split = split.select([i for i in range(n) if i not in over])
        note = f"dropped {len(over)} of {n} rows longer than model.max_seq_len={seq_len}"
        return split, encode(split), f"data.{key}: {note} (data.overlong=drop)"
    note = f"{len(over)} of {n} rows cut to model.max_seq_len={seq_len}"
    return split, encoded, f"warning: data.{key}: {note} (data.overlong=truncate; or drop|error)"
