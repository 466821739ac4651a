"""Tokenizing a stream of document batches into flat token arrays: in this process with the
tokenizer's own threads, or in `data.num_proc` worker processes (one thread each), in order."""

from __future__ import annotations

import collections
import itertools
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator

import numpy as np
from tokenizers import Tokenizer

Encoded = tuple[np.ndarray, np.ndarray]  # (tokens back to back, each document's length)
_worker_tokenizer: Tokenizer | None = None


def encode_batch(tok: Tokenizer, texts: list[str], dtype: np.dtype) -> Encoded:
    """Token ids of `texts` (no special tokens) as one flat array, and each text's length."""
    # encode_batch_fast skips character offsets, which a token store never needs
    encodings = tok.encode_batch_fast(texts, add_special_tokens=False)
    ids = [e.ids for e in encodings]  # each access builds a list: take them once
    lengths = np.fromiter(map(len, ids), np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype, count=int(lengths.sum()))
    return flat, lengths


def _init_worker(tokenizer_json: str) -> None:
    global _worker_tokenizer
    # One thread per worker: the processes are the parallelism (and the library would
    # otherwise start a thread pool per process, oversubscribing the cores).
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_tokenizer = Tokenizer.from_str(tokenizer_json)


def _encode_in_worker(texts: list[str], dtype: str) -> Encoded:
    assert _worker_tokenizer is not None
    return encode_batch(_worker_tokenizer, texts, np.dtype(dtype))


def encode_all(
    tok: Tokenizer,
    batches: Iterable[list[str]],
    dtype: np.dtype,
    num_proc: int,
    sink: Callable[[np.ndarray, np.ndarray], None],
) -> None:
    """Tokenize every batch and hand (flat, lengths) to `sink` in input order."""
    if num_proc <= 1:
        for texts in batches:
            sink(*encode_batch(tok, texts, dtype))
        return
    # spawn: a forked child of a process that already ran the tokenizer's thread pool (or
    # torch's) would inherit its locks; spawned workers start clean
    context = multiprocessing.get_context("spawn")
    with context.Pool(num_proc, _init_worker, (tok.to_str(),)) as pool:
        for flat, lengths in _ordered(pool, batches, np.dtype(dtype).name, 2 * num_proc):
            sink(flat, lengths)


def _ordered(pool, batches: Iterable[list[str]], dtype: str, ahead: int) -> Iterator[Encoded]:  # noqa: ANN001
    """Results in input order with at most `ahead` batches in flight: Pool.imap would read the
    whole corpus into its task queue before the first result came back."""
    pending: collections.deque = collections.deque()
    for texts in batches:
        pending.append(pool.apply_async(_encode_in_worker, (texts, dtype)))
        if len(pending) >= ahead:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()
