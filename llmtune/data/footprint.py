"""What the data path of a pretrain run costs, before it runs: the token stores' size on disk
(read from their manifests once prepared, else estimated from the text's size) and the memory
the run keeps resident for them, which grows with documents and windows, never with text."""

from __future__ import annotations

import os
from dataclasses import dataclass

from tokenizers import Tokenizer

from llmtune.config.schema import RunConfig
from llmtune.data.builtin import builtin_documents
from llmtune.data.corpus import TextSplit
from llmtune.data.pipeline import corpora, store_root
from llmtune.data.sources import cache_root, checked_files
from llmtune.data.store import open_store, store_dtype, store_key
from llmtune.data.tokenizer import load_tokenizer_file, tokenizer_cache_path, tokenizer_hash
from llmtune.models.registry import family as family_of

CHARS_PER_TOKEN = 4.0  # English text with an 8k-32k subword vocabulary, before a store exists
CHARS_PER_DOCUMENT = 2000.0  # likewise, for the document index estimate
MiB = 1 << 20


@dataclass
class Footprint:
    """Tokens and documents per split, bytes on disk, and where the numbers come from."""

    tokens: dict[str, int]
    documents: dict[str, int]
    disk_bytes: int
    source: str  # "prepared stores ..." or "estimate ..."


def footprint(config: RunConfig) -> Footprint | None:
    """The run's stores if prepared, else an estimate from file sizes (None: a Hub dataset or
    a stream, whose size plan does not look up)."""
    sources = [m.source for m in config.data.mix.values()] or [config.data.source]
    if config.data.streaming or "hub" in sources:  # plan does not reach for the Hub
        return None
    found = [splits for _, _, splits in corpora(config.data, config.seed)]
    prepared = _prepared(config, found)
    if prepared is not None:
        return prepared
    text_bytes = 0
    for splits in found:
        for key in {split.source.key for split in splits.values()}:
            cfg = splits["train"].source.cfg
            if cfg.source == "builtin":
                text_bytes += sum(len(d) for d in builtin_documents())
            else:
                files, _ = checked_files(cfg, key)
                text_bytes += sum(os.stat(f).st_size for f in files)
    tokens = int(text_bytes / CHARS_PER_TOKEN)
    docs = int(text_bytes / CHARS_PER_DOCUMENT)
    itemsize = store_dtype(config.model.vocab_size or config.tokenizer.vocab_size).itemsize
    return Footprint(
        {"train": tokens},
        {"train": docs},
        tokens * itemsize + 8 * docs,
        f"estimate from {text_bytes / MiB:,.1f} MiB of text (~{CHARS_PER_TOKEN:g} bytes a token)",
    )


def _prepared(config: RunConfig, found: list[dict[str, TextSplit]]) -> Footprint | None:
    """The stores `llmtune prepare` (or an earlier run) left, found without reading text."""
    tokenizer = _cached_tokenizer(config, [splits["train"] for splits in found])
    if tokenizer is None:
        return None
    tokens: dict[str, int] = {}
    documents: dict[str, int] = {}
    disk, where = 0, None
    for splits in found:
        for name in ("train", "validation"):
            key = store_key(splits[name].fingerprint, tokenizer_hash(tokenizer))
            store = open_store(store_root(config.data), key)
            if store is None:
                return None
            tokens[name] = tokens.get(name, 0) + store.n_tokens
            documents[name] = documents.get(name, 0) + store.n_docs
            disk += store.nbytes
            where = store.path.parent
    return Footprint(tokens, documents, disk, f"prepared stores in {where}")


def _cached_tokenizer(config: RunConfig, train: list[TextSplit]) -> Tokenizer | None:
    tok = config.tokenizer
    if tok.kind == "file":
        return load_tokenizer_file(
            tok.path, family_of(config.model.family).tokenizer, tok.lowercase
        )
    path = tokenizer_cache_path(tok, tok.kind, train, cache_root(config.data))
    return Tokenizer.from_file(str(path)) if path.is_file() else None


def data_rows(config: RunConfig) -> list[tuple[str, str]]:
    """(label, value) rows for `llmtune plan`: the data path's disk and memory."""
    fp = footprint(config)
    seq_len, world = config.model.max_seq_len, config.hardware.world_size
    micro, workers = config.train.micro_batch_size, config.hardware.num_workers
    # a batch's tensors: up to 4 int64 [micro, seq_len] keys (ids, types, mask, doc ids);
    # the loop's, plus two read ahead per loader worker
    batches = 4 * 8 * micro * seq_len * (2 + 2 * workers)
    if fp is None:
        return [
            ("source", "a Hub dataset or a stream: its size is known once prepared or read"),
            ("resident (batches)", f"{batches / MiB:,.1f} MiB"),
        ]
    docs, train = sum(fp.documents.values()), fp.tokens.get("train", 0)
    windows = sum(fp.tokens.values()) // seq_len
    index = 24 * docs  # document starts plus the per-document tables packing/pairs keep
    order = 8 * (fp.tokens.get("train", 0) // seq_len) * (1 + 1 / world)  # epoch permutation
    rows = [
        ("source", fp.source),
        ("text tokens", f"{train:,} train" + _val(fp)),
        ("token stores on disk", f"{fp.disk_bytes / MiB:,.1f} MiB"),
        ("resident: document index", f"{index / MiB:,.1f} MiB (24 bytes a document)"),
        ("resident: window order", f"{order / MiB:,.1f} MiB (8 bytes a window, ~{windows:,})"),
        ("resident: batches", f"{batches / MiB:,.1f} MiB ({workers} loader workers)"),
        ("resident total", f"{(index + order + batches) / MiB:,.1f} MiB (text stays on disk)"),
    ]
    return rows


def _val(fp: Footprint) -> str:
    return f", {fp.tokens['validation']:,} validation" if "validation" in fp.tokens else ""
