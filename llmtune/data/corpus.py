"""The pretraining corpus as document splits that are streamed, never held whole: raw text
read in batches, cleaned, deduplicated and split into train and validation, each split named
by a fingerprint computed without reading the text (so a prepared run never reads it)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
from datasets.table import InMemoryTable

from llmtune.config.schema import DATA_SOURCES, DataConfig, FilesData, HubData
from llmtune.data.builtin import builtin_documents
from llmtune.data.sources import (
    RawText,
    cache_root,
    files_fingerprint,
    iter_raw_batches,
    raw_text,
)
from llmtune.errors import DataError

BATCH_DOCS = 1000  # documents per batch handed on to tokenizer training and tokenizing
CORPUS_VERSION = 1  # bump when cleaning changes what a fingerprint stands for
# A blank line (possibly holding spaces or tabs) ends a document in a .txt file.
_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")


@dataclass
class Source:
    """One data.<key> (or one stream): its cleaned documents, in order, batch by batch."""

    cfg: DataConfig
    key: str  # train | validation | test: which data.<key> it reads
    fingerprint: str
    where: str  # for messages: what the user named
    _raw: RawText | None = field(default=None, repr=False)
    _count: int | None = field(default=None, repr=False)

    def raw(self) -> RawText:
        if self._raw is None:
            self._raw = raw_text(self.cfg, self.key)
        return self._raw

    def batches(self) -> Iterator[list[str]]:
        """Cleaned documents: stripped, .txt paragraphs split on blank lines, shorter than
        data.min_chars dropped, exact duplicates dropped (data.dedupe), at most data.max_docs."""
        raw = self.raw()
        seen: set[bytes] | None = set() if self.cfg.dedupe else None
        left = self.cfg.max_docs or math.inf
        for batch in _checked(iter_raw_batches(raw, BATCH_DOCS), self.key):
            out = clean_documents(batch, self.cfg.min_chars, raw.paragraphs, seen)
            if len(out) >= left:
                yield out[: int(left)]
                return
            left -= len(out)
            if out:
                yield out

    def count(self) -> int:
        """Number of cleaned documents; one pass over the text, remembered in the cache."""
        if self._count is not None:
            return self._count
        memo = cache_root(self.cfg) / "corpus" / f"{self.fingerprint}.json"
        if memo.is_file():
            self._count = int(json.loads(memo.read_text())["documents"])
            return self._count
        n = sum(len(b) for b in self.batches())
        if n == 0:
            raise DataError(
                f"data.{self.key}: 0 documents left after cleaning (min_chars="
                f"{self.cfg.min_chars}, dedupe={self.cfg.dedupe}); check the files, "
                "data.text_column and data.min_chars"
            )
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_suffix(f".tmp{id(self)}")
        tmp.write_text(json.dumps({"documents": n, "where": self.where}))
        tmp.replace(memo)
        self._count = n
        return n


def _checked(batches: Iterator[list], key: str) -> Iterator[list]:
    """A stream's column is only known once read: a missing one is a one-line error."""
    try:
        yield from batches
    except KeyError as exc:
        raise DataError(
            f"data.{key}: no column {exc} in the stream; set data.text_column"
        ) from None


def clean_documents(
    texts: list, min_chars: int, paragraphs: bool, seen: set[bytes] | None
) -> list[str]:
    """Stripped documents of at least min_chars; .txt paragraphs split on blank lines; with
    `seen`, exact duplicates of earlier documents dropped."""
    out: list[str] = []
    for text in texts:
        pieces = _BLANK_LINE.split(text) if (paragraphs and text) else [text or ""]
        for piece in pieces:
            doc = piece.strip()
            if not doc or len(doc) < min_chars:
                continue
            if seen is not None:  # 16-byte digests: the texts themselves are not kept
                digest = hashlib.blake2b(doc.encode(), digest_size=16).digest()
                if digest in seen:
                    continue
                seen.add(digest)
            out.append(doc)
    return out


@dataclass
class TextSplit:
    """A split of the corpus: all of a source, or the train or validation part carved out of
    it by data.validation_fraction and the seed (exactly as `carve_validation` carves)."""

    name: str  # train | validation | test
    source: Source
    part: str = "all"  # all | train | validation
    fraction: float = 0.0
    seed: int = 0

    @property
    def fingerprint(self) -> str:
        fields = [self.source.fingerprint, self.part]
        if self.part != "all":
            fields += [self.fraction, self.seed]
        return _digest(fields)

    def describe(self) -> str:
        carved = f" ({self.part} part)" if self.part != "all" else ""
        return f"{self.source.where}{carved}"

    def n_docs(self) -> int:
        if self.part == "all":
            return self.source.count()
        n_val = self._n_val(self.source.count())
        return n_val if self.part == "validation" else self.source.count() - n_val

    def _n_val(self, n: int) -> int:
        if n < 2:
            raise DataError(
                f"data.{self.source.key}: only {n} document(s), too few to carve out a "
                "validation split; add documents or set data.validation"
            )
        return min(n - 1, max(1, round(self.fraction * n)))

    def batches(self, sample: int = 0) -> Iterator[list[str]]:
        """The split's documents in corpus order; `sample` > 0: an evenly spaced sample of that
        many (all when the split is smaller)."""
        if self.source.cfg.streaming:  # a stream's length is unknown: its first `sample`
            yield from _first(self._stream_part(), sample)
            return
        keep = self._keep_mask()
        n_docs = self.n_docs() if sample else 0
        chosen = _even_sample(n_docs, sample) if sample and sample < n_docs else None
        seen = 0  # documents of the source passed so far
        kept = 0  # documents of this split passed so far
        for batch in self.source.batches():
            mask = np.ones(len(batch), bool) if keep is None else keep[seen : seen + len(batch)]
            seen += len(batch)
            docs = [d for d, k in zip(batch, mask) if k]
            if chosen is not None:
                docs = [d for i, d in enumerate(docs, start=kept) if chosen(i)]
            kept += int(mask.sum())
            if docs:
                yield docs

    def _stream_part(self) -> Iterator[list[str]]:
        """A stream is split by a hash of each document's text (see `is_validation`)."""
        want = self.part == "validation"
        for batch in self.source.batches():
            docs = [d for d in batch if is_validation(d, self.fraction) == want]
            if docs:
                yield docs

    def _keep_mask(self) -> np.ndarray | None:
        """Which of the source's documents belong to this split (1 byte per document)."""
        if self.part == "all":
            return None
        n = self.source.count()
        order = np.random.default_rng(self.seed).permutation(n)
        is_val = np.zeros(n, dtype=bool)
        is_val[order[: self._n_val(n)]] = True
        return is_val if self.part == "validation" else ~is_val


def is_validation(text: str, fraction: float) -> bool:
    """Whether a streamed document is held out: a hash of its text below `fraction`. Every
    rank decides alike without knowing the stream's length or how it is sharded."""
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") < fraction * 2**64


def _first(batches: Iterator[list[str]], n: int) -> Iterator[list[str]]:
    """The first n documents of `batches` (all when n is 0)."""
    left = n or math.inf
    for batch in batches:
        yield batch[: int(min(left, len(batch)))]
        left -= len(batch)
        if left <= 0:
            return


def _even_sample(n: int, k: int) -> Callable[[int], bool]:
    """Document i of n is in an evenly spaced sample of k: the k-th multiples of n/k."""
    return lambda i: (i * k) // n != ((i + 1) * k) // n


def _digest(fields: list) -> str:
    return hashlib.sha256(json.dumps([CORPUS_VERSION, *fields]).encode()).hexdigest()[:20]


def _source(cfg: DataConfig, key: str) -> Source:
    """data.<key> of data.source as a Source, fingerprinted without reading any text."""
    # the builtin corpus has no columns: its text is "text", as a one-column table's
    column = cfg.text_column if isinstance(cfg, FilesData | HubData) else "text"
    cleaning = [column, cfg.min_chars, cfg.dedupe, cfg.max_docs]
    if cfg.source == "files":
        where = f"data.{key} '{getattr(cfg, key)}'"
        return Source(cfg, key, _digest(["files", *files_fingerprint(cfg, key), *cleaning]), where)
    if cfg.source == "builtin":
        if key != "train":
            raw_text(cfg, key)  # the one-line error for a split the builtin corpus lacks
        content = hashlib.sha256("\x00".join(builtin_documents()).encode()).hexdigest()
        return Source(cfg, key, _digest(["builtin", content, *cleaning]), "the builtin corpus")
    if cfg.source == "hub":
        split = cfg.split if key == "train" else getattr(cfg, key)
        source = Source(cfg, key, "", f"data.name={cfg.name} split {split}")
        source.fingerprint = _digest(["hub", _hub_identity(cfg, source.raw(), split), *cleaning])
        return source
    raise DataError(f"data.source={cfg.source!r} is unknown; use builtin, files or hub")


def _hub_identity(cfg: DataConfig, raw: RawText, split: str) -> list:
    """A Hub split is known by the fingerprint `datasets` gives it; a stream by its name and,
    for a local folder, its files' sizes and modification times."""
    if isinstance(raw.table, datasets.Dataset):
        return [raw.table._fingerprint]
    folder = Path(cfg.name).expanduser()
    files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
    stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return [cfg.name, cfg.config, split, stats]


def open_corpus(cfg: DataConfig, seed: int) -> dict[str, TextSplit]:
    """The splits "train", "validation" (data.validation, or carved out of train) and, when
    set, "test"; nothing is read until a split's documents are asked for."""
    train = _source(cfg, "train")
    if cfg.streaming:  # a stream cannot be counted: hold documents out by a hash instead
        carve = {"fraction": cfg.validation_fraction, "seed": 0}
        return {
            "train": TextSplit("train", train, "train", **carve),
            "validation": TextSplit("validation", train, "validation", **carve),
        }
    if cfg.validation:
        validation = TextSplit("validation", _source(cfg, "validation"))
        splits = {"train": TextSplit("train", train), "validation": validation}
    else:
        carve = {"fraction": cfg.validation_fraction, "seed": seed}
        splits = {
            "train": TextSplit("train", train, "train", **carve),
            "validation": TextSplit("validation", train, "validation", **carve),
        }
    if cfg.test:
        splits["test"] = TextSplit("test", _source(cfg, "test"))
    return splits


def mix_configs(cfg: DataConfig) -> list[tuple[str, float, DataConfig]]:
    """(name, weight, the corpus as a one-source DataConfig) of each data.mix entry, in order."""
    out = []
    shared = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(DataConfig)}
    for name, m in cfg.mix.items():
        own: dict = {"source": m.source, "train": m.train, "validation": m.validation}
        if m.source == "hub":
            own |= {"name": m.name, "config": m.config, "split": m.split}
        if m.source != "builtin":
            own["text_column"] = m.text_column or cfg.text_column
        out.append((name, m.weight, DATA_SOURCES[m.source](**{**shared, **own})))
    return out


def load_corpus(cfg: DataConfig, seed: int) -> dict[str, datasets.Dataset]:
    """The splits of `open_corpus` read into memory as one-column ("text") datasets, for
    small data (evaluation test sets); pretraining streams them instead."""
    out = {}
    for name, split in open_corpus(cfg, seed).items():
        docs = [doc for batch in split.batches() for doc in batch]
        if not docs:
            split.source.count()  # the one-line "0 documents left after cleaning" error
        table = InMemoryTable.from_pydict({"text": docs})
        out[name] = datasets.Dataset(table, fingerprint=f"corpus-{split.fingerprint}")
    return out
