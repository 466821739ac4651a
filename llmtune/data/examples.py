"""A training run's examples from its data, for whichever objective builds them: plain text
read from its token stores and packed or paired by the objective, or labelled rows encoded by
the objective with data.overlong applied, each split checked to hold an example."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import datasets
import torch
from rich.console import Console
from tokenizers import Tokenizer

from llmtune.config.schema import RunConfig
from llmtune.data.labelled import Encoded
from llmtune.data.overlong import fit_to_length
from llmtune.data.pipeline import PreparedData, lm_examples, prepare_once
from llmtune.data.rows import Rows
from llmtune.errors import DataError

SPLITS = ("train", "validation")
Batch = dict[str, torch.Tensor]
# (a token store, sequence length, seed) -> fixed-length examples (rows)
MakeExamples = Callable[..., Rows]


def text_examples(
    config: RunConfig,
    tokenizer: Tokenizer,
    make_examples: MakeExamples,
    prepared: PreparedData | None = None,
) -> dict[str, Rows]:
    """{"train", "validation"} examples of the run's text, cut by `make_examples` from its
    token stores: `prepared` when the command built them, else built (or found) now with
    `tokenizer` (continued pretraining reads text as pretrain does)."""
    prepared = prepared if prepared is not None else prepare_once(config, tokenizer)
    make = partial(make_examples, seq_len=config.model.max_seq_len, seed=config.seed)
    return lm_examples(make, prepared, config)


def encoded_splits(
    raw: dict[str, datasets.Dataset],
    encode: Callable[..., Encoded],
    config: RunConfig,
    console: Console,
) -> dict[str, Encoded]:
    """Each labelled split encoded by `encode(split, seq_len=, key=)`, over-long rows handled
    as data.overlong says; what was cut or dropped is said on the console."""
    seq_len = config.model.max_seq_len
    out = {}
    for split in SPLITS:
        encode_split = partial(encode, seq_len=seq_len, key=split)
        _, encoded, note = fit_to_length(raw[split], encode_split, config.data, split, seq_len)
        if note:
            console.print(note)
        if encoded.n_dropped:
            console.print(
                f"data.{split}: {encoded.n_dropped} examples dropped: the prompt filled "
                f"model.max_seq_len={seq_len}, leaving no response token to learn"
            )
        if len(encoded.rows["input_ids"]) == 0:
            raise DataError(f"data.{split}: no usable example; check the file and its columns")
        out[split] = encoded
    return out
