"""A training run's examples from its data, for whichever objective builds them: plain text
tokenized (cached) and packed or paired by the objective, or labelled rows encoded by the
objective with data.overlong applied, each split checked to hold an example."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import datasets
import torch
from rich.console import Console

from llmtune.config.schema import RunConfig
from llmtune.console import note, stage
from llmtune.data.labelled import Encoded
from llmtune.data.overlong import fit_to_length
from llmtune.data.sources import cache_root, load_corpus
from llmtune.data.tokenizer import tokenize_corpus
from llmtune.errors import DataError

SPLITS = ("train", "validation")
Batch = dict[str, torch.Tensor]
# (token ids of each document, sequence length, seed) -> fixed-length examples
MakeExamples = Callable[[datasets.Dataset, int, int], Batch]


def text_examples(
    config: RunConfig,
    tokenizer: object,
    make_examples: MakeExamples,
    corpus: dict[str, datasets.Dataset] | None = None,
) -> dict[str, Batch]:
    """{"train", "validation"} examples of the run's text (`corpus` when already read)."""
    seq_len = config.model.max_seq_len
    corpus = corpus if corpus is not None else load_corpus(config.data, config.seed)
    examples = {}
    for split in SPLITS:
        with stage("tokenization", f"the {split} split into examples of {seq_len} tokens"):
            token_ids = tokenize_corpus(
                corpus[split], tokenizer, cache_root(config.data), config.data.num_proc
            )
            examples[split] = make_examples(token_ids, seq_len, config.seed)
            note(f"{len(examples[split]['input_ids']):,} examples")
        if len(examples[split]["input_ids"]) == 0:
            raise DataError(
                f"data.{split}: no training example of {seq_len} tokens could be built; "
                "add text or lower model.max_seq_len"
            )
    return examples


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
