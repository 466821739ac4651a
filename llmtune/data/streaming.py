"""data=hub data.streaming=true: pretraining from a streamed dataset, never downloaded whole.

Each rank reads its own shard of the stream in chunks of documents, tokenizes a chunk in
memory and lets the objective build its examples from it (packed windows, BERT pairs) as
from a token store; a chunk's rows are shuffled by (seed, rank, epoch, chunk). The position
saved with a checkpoint is the stream's own state at the chunk's start plus the batches
taken from the chunk, so a resume reads on from exactly there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from datasets.distributed import split_dataset_by_node
from tokenizers import Tokenizer

from llmtune.config.schema import DataConfig, RunConfig
from llmtune.data.corpus import clean_documents, is_validation, open_corpus
from llmtune.data.encode import encode_batch
from llmtune.data.rows import Batch, Rows, TensorRows, to_tensors
from llmtune.data.sources import raw_text
from llmtune.errors import DataError

CHUNK_DOCS = 1000  # documents tokenized together; a chunk's rows are shuffled together
Make = Callable[[Any], Rows]  # a chunk (a store in memory) -> the objective's examples


class ChunkStore:
    """Tokenized documents in memory, read like a TokenStore (doc_starts, tokens)."""

    def __init__(self, flat: np.ndarray, lengths: np.ndarray) -> None:
        self.flat = flat.astype(np.int64)
        self.starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
        self.n_docs, self.n_tokens = len(lengths), int(self.starts[-1])

    def doc_starts(self) -> np.ndarray:
        return self.starts

    def tokens(self, start: int, end: int) -> np.ndarray:
        return self.flat[start:end]


def _encode(tok: Tokenizer, docs: list[str]) -> ChunkStore:
    return ChunkStore(*encode_batch(tok, docs, np.dtype(np.int64)))


def validation_rows(config: RunConfig, tok: Tokenizer, make: Make) -> TensorRows:
    """The first documents of the stream's held-out part, enough for the evaluation's
    train.eval_batches micro-batches (a chunk's worth when it evaluates everything)."""
    split = open_corpus(config.data, config.seed)["validation"]
    want = config.train.eval_batches * config.train.micro_batch_size
    docs: list[str] = []
    rows = None
    for batch in split.batches():
        docs.extend(batch)
        if len(docs) >= (CHUNK_DOCS if not want else 1):
            rows = _try_rows(make, _encode(tok, docs))
            if rows is not None and want and len(rows) >= want:
                break
    if docs and rows is None:
        rows = _try_rows(make, _encode(tok, docs))
    if rows is None or len(rows) == 0:
        raise DataError(
            f"data.name={config.data.name}: the stream's held-out part (data.validation_fraction"
            f"={config.data.validation_fraction}) holds too little text for one example"
        )
    n = min(len(rows), want) if want else len(rows)
    return TensorRows({k: v[:n] for k, v in to_tensors(rows).items()})


def _try_rows(make: Make, chunk: ChunkStore) -> Rows | None:
    try:
        return make(chunk)
    except DataError:  # too little text yet for one example
        return None


class StreamExamples:
    """The training examples of a stream: no table (its length is unknown) but a maker of
    each rank's micro-batches (see data/loader.py `train_batches`)."""

    def __init__(self, data: DataConfig, tok: Tokenizer, make: Make) -> None:
        self.data, self.tok, self.make = data, tok, make

    def train_batches(self, config: RunConfig, shard: tuple[int, int]) -> StreamBatches:
        return StreamBatches(self, config.train.micro_batch_size, config.seed, shard)


class StreamBatches:
    """This rank's micro-batches of the stream, with a resumable position."""

    def __init__(
        self, source: StreamExamples, micro: int, seed: int, shard: tuple[int, int]
    ) -> None:
        self.source, self.micro, self.seed, self.shard = source, micro, seed, shard
        self.epoch, self.chunk, self.position = 0, 0, 0
        self._start_state: dict | None = None  # the stream's state where this chunk begins
        self._stream: Any = None
        self._iter: Iterator[dict] | None = None
        self._rows: Rows | None = None
        self._order = torch.zeros(0, dtype=torch.long)

    def _open(self, state: dict | None) -> None:
        raw = raw_text(self.source.data, "train")
        rank, world = self.shard
        self._stream = split_dataset_by_node(raw.table, rank=rank, world_size=world)
        self._column = raw.column
        if state is not None:
            self._stream.load_state_dict(state)
        self._iter = iter(self._stream)

    def _next_docs(self) -> list[str]:
        """The next chunk of this rank's training documents; the stream restarts at its end
        (a new epoch), never splitting a chunk across epochs."""
        data = self.source.data
        docs: list[str] = []
        while len(docs) < CHUNK_DOCS:
            try:
                example = next(self._iter)
            except StopIteration:
                if docs:
                    return docs
                self.epoch, self.chunk = self.epoch + 1, 0
                self._start_state = None
                self._open(None)
                continue
            except KeyError as exc:
                raise DataError(
                    f"data.train: no column {exc} in the stream; set data.text_column"
                ) from None
            text = example.get(self._column)
            if text is None and self._column not in example:
                raise DataError(
                    f"data.train: no column '{self._column}' in the stream; set data.text_column"
                )
            cleaned = clean_documents([text], data.min_chars, False, None)
            docs.extend(d for d in cleaned if not is_validation(d, data.validation_fraction))
        return docs

    def _load_chunk(self) -> None:
        if self._iter is None:  # (re)opened where the chunk begins
            self._open(self._start_state)
        else:  # reading on: the chunk begins where the stream stands
            self._start_state = self._stream.state_dict()
        for attempt in range(2):  # a chunk too small for one batch (end of stream): next one
            docs = self._next_docs()
            rows = _try_rows(self.source.make, _encode(self.source.tok, docs))
            if rows is not None and len(rows) >= self.micro:
                break
            if attempt == 1:
                raise DataError(
                    f"data.name={self.source.data.name}: this rank's part of the stream holds "
                    f"too little text for one micro-batch of {self.micro}; add data or lower "
                    "train.micro_batch_size"
                )
            self.chunk += 1
            self._start_state = self._stream.state_dict()
        mixed = ((self.seed * 1_000_003 + self.shard[0]) * 4099 + self.epoch) * 65_537 + self.chunk
        gen = torch.Generator().manual_seed(mixed % 2**63)
        self._rows, self._order = rows, torch.randperm(len(rows), generator=gen)

    def __iter__(self) -> StreamBatches:
        return self

    def __next__(self) -> Batch:
        if self._rows is None:
            self._load_chunk()
        start = self.position * self.micro
        index = self._order[start : start + self.micro]
        batch = self._rows.rows(index, self.epoch)
        self.position += 1
        if (self.position + 1) * self.micro > len(self._order):  # the chunk is used up
            self._rows, self.chunk, self.position = None, self.chunk + 1, 0
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Every rank's position (each reads its own shard), gathered like the RNG states:
        the stream's state at the current chunk's start and the batches taken from it."""
        own = {
            "epoch": self.epoch,
            "chunk": self.chunk,
            "position": self.position,
            "stream": self._start_state if self._rows is not None else self._next_state(),
        }
        ranks = [own]
        if dist.is_initialized() and dist.get_world_size() > 1:  # a collective: all ranks save
            ranks = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, own)
        return {"epoch": self.epoch, "position": self.position, "ranks": ranks}

    def _next_state(self) -> dict | None:
        return self._stream.state_dict() if self._stream is not None else self._start_state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ranks = state["ranks"]
        if len(ranks) != self.shard[1]:
            raise DataError(
                f"this streamed run was saved by {len(ranks)} process(es); resume it with "
                f"the same number (each reads its own part of the stream), not {self.shard[1]}"
            )
        own = ranks[self.shard[0]]
        self.epoch, self.chunk = int(own["epoch"]), int(own["chunk"])
        self._start_state = own.get("stream")
        self._iter, self._rows = None, None
        position = int(own["position"])
        if position:
            self._load_chunk()
        self.position = position
