"""The pretraining data path end to end: corpus -> tokenizer -> token stores -> examples, each
stage reused when it exists. With several processes, rank 0 builds while the others wait, so
no rank tokenizes twice; then every rank maps the same stores."""

from __future__ import annotations

import dataclasses
import datetime
import errno
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.distributed as dist
from tokenizers import Tokenizer

from llmtune.config.schema import DataConfig, RunConfig
from llmtune.console import note, stage
from llmtune.data.corpus import TextSplit, mix_configs, open_corpus
from llmtune.data.encode import encode_all
from llmtune.data.rows import MixedRows, Rows
from llmtune.data.sources import cache_root
from llmtune.data.store import StoreWriter, TokenStore, open_store, store_dtype, store_key
from llmtune.data.tokenizer import (
    get_tokenizer,
    resolve_kind,
    tokenizer_cache_path,
    tokenizer_hash,
)
from llmtune.errors import DataError
from llmtune.models.registry import family as family_of

SPLITS = ("train", "validation")
# How long the other ranks wait for rank 0 to prepare the data: building a large store takes
# hours, and a builder that dies closes its connections, which ends the wait at once.
PREPARE_TIMEOUT = datetime.timedelta(days=7)


@dataclass
class StoreUse:
    """One token store of the run: which split and corpus it holds, and whether this process
    built it (with how long it took) or found it."""

    split: str
    corpus: str  # the data.mix name, or "" for a single corpus
    weight: float
    store: TokenStore
    built: bool = False
    seconds: float = 0.0


@dataclass
class PreparedData:
    tokenizer: Tokenizer
    tokenizer_note: str  # where the tokenizer came from
    tokenizer_seconds: float
    stores: list[StoreUse] = field(default_factory=list)

    def split(self, name: str) -> list[StoreUse]:
        return [use for use in self.stores if use.split == name]


def store_root(cfg: DataConfig) -> Path:
    """Where token stores live: data.store_dir, else <cache>/stores."""
    return Path(cfg.store_dir).expanduser() if cfg.store_dir else cache_root(cfg) / "stores"


def corpora(cfg: DataConfig, seed: int) -> list[tuple[str, float, dict[str, TextSplit]]]:
    """(name, weight, splits) of each corpus: the data.mix entries, or the one corpus."""
    if cfg.mix:
        return [(name, w, open_corpus(one, seed)) for name, w, one in mix_configs(cfg)]
    return [("", 1.0, open_corpus(cfg, seed))]


def prepare_data(
    config: RunConfig, build: bool = True, tokenizer: Tokenizer | None = None
) -> PreparedData:
    """The run's tokenizer (trained or cached; `tokenizer` when a checkpoint brings one) and
    its train and validation token stores, built when absent (`build`=False: found, or a
    DataError)."""
    data = config.data
    with stage("corpus", f"opening data={data.source}"):
        found = corpora(data, config.seed)
        note(_documents(found, data.streaming))
    if tokenizer is None:
        prepared = _tokenizer(config, [splits["train"] for _, _, splits in found], build)
    else:
        prepared = PreparedData(tokenizer, "the checkpoint's", 0.0)
    tokenizer = prepared.tokenizer
    if data.streaming:  # tokenized on the fly: no store
        return prepared
    tok_hash = tokenizer_hash(tokenizer)
    for name, weight, splits in found:
        for split in SPLITS:
            use = _store(splits[split], tokenizer, tok_hash, data, build)
            use.corpus, use.weight = name, weight
            prepared.stores.append(use)
    return prepared


def _documents(found: list[tuple[str, float, dict[str, TextSplit]]], streaming: bool) -> str:
    """'N train / M validation documents' (counted once per corpus, remembered in the cache);
    a stream's cannot be counted, so its name."""
    if streaming:
        return ", ".join(f"streaming {splits['train'].source.where}" for _, _, splits in found)
    n = [sum(splits[s].n_docs() for _, _, splits in found) for s in SPLITS]
    return f"{n[0]:,} train / {n[1]:,} validation documents"


def _tokenizer(config: RunConfig, train: list[TextSplit], build: bool) -> PreparedData:
    """The tokenizer trained on the train split(s) (cached), or tokenizer.path's."""
    family, native = config.model.family, family_of(config.model.family).tokenizer
    kind = resolve_kind(config.tokenizer, native)
    cache = cache_root(config.data)
    path = None if kind == "file" else tokenizer_cache_path(config.tokenizer, kind, train, cache)
    if path is not None and not path.is_file() and not build:
        raise DataError(f"the tokenizer is not prepared at {path}; run `llmtune prepare` first")
    started = time.perf_counter()
    with stage("tokenizer", f"{kind} for {family}") as shown:
        tokenizer = get_tokenizer(config.tokenizer, native, train, cache)
        if path is None:
            note(f"loaded {config.tokenizer.path}")
    trained = any(n.startswith("trained") for n in shown.notes)
    seconds = time.perf_counter() - started if trained else 0.0
    where = f"{'trained' if trained else 'cached'}: {path}" if path else config.tokenizer.path
    return PreparedData(tokenizer, where, seconds)


def test_store(data: DataConfig, tokenizer: Tokenizer, seed: int) -> TokenStore:
    """data.test tokenized into a store (built once, like a training split's)."""
    single = {"mix": {}} if data.mix else {}  # data=mix's test file is one corpus
    as_train = dataclasses.replace(data, train=data.test, validation=data.test, test="", **single)
    split = open_corpus(as_train, seed)["train"]
    return _store(split, tokenizer, tokenizer_hash(tokenizer), data, True).store


def _store(
    split: TextSplit, tok: Tokenizer, tok_hash: str, data: DataConfig, build: bool
) -> StoreUse:
    root, key = store_root(data), store_key(split.fingerprint, tok_hash)
    with stage("tokenization", f"the {split.name} split of {split.describe()} into a token store"):
        store = open_store(root, key, repair=build)  # a damaged one: warned, removed, rebuilt
        if store is not None:
            note(f"tokens reused from the token store {store.path} ({_sizes(store)})")
            return StoreUse(split.name, "", 1.0, store)
        if not build:
            raise DataError(
                f"the {split.name} token store is not prepared at {root / key}; run "
                "`llmtune prepare` first"
            )
        started = time.perf_counter()
        store = build_store(split, tok, root, key, data.num_proc)
        seconds = time.perf_counter() - started
        rate = store.n_tokens / max(seconds, 1e-9)
        note(f"tokenized into {store.path} ({_sizes(store)}, {rate:,.0f} tokens/s)")
        return StoreUse(split.name, "", 1.0, store, True, seconds)


def _sizes(store: TokenStore) -> str:
    return f"{store.n_docs:,} documents, {store.n_tokens:,} tokens, {store.nbytes / 2**20:.1f} MiB"


def build_store(
    split: TextSplit, tok: Tokenizer, root: Path, key: str, num_proc: int
) -> TokenStore:
    """Tokenize `split` into the store `key` under `root` (num_proc tokenizing processes)."""
    vocab = tok.get_vocab_size(with_added_tokens=True)
    dtype = store_dtype(vocab)
    info = {
        "split": split.name,
        "corpus": split.describe(),
        "fingerprint": split.fingerprint,
        "tokenizer": tokenizer_hash(tok),
        "vocab_size": vocab,
    }
    try:
        with StoreWriter(root, key, dtype, info) as writer:
            encode_all(tok, split.batches(), dtype, num_proc, writer.add)
            if writer.n_docs == 0:
                split.source.count()  # raises the one-line "0 documents left" error
            return writer.commit()
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DataError(
                f"disk full while writing the token store under {root}; free space or set "
                "data.store_dir to a larger disk"
            ) from None
        raise


def prepare_once(config: RunConfig, tokenizer: Tokenizer | None = None) -> PreparedData:
    """`prepare_data` on every rank, with the building done once: rank 0 first, then the
    first rank of each other node (its cache may be a local disk), then everyone else."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return prepare_data(config, tokenizer=tokenizer)
    group = dist.new_group(backend="gloo", timeout=PREPARE_TIMEOUT)
    rank, local_rank = dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    try:
        prepared = prepare_data(config, tokenizer=tokenizer) if rank == 0 else None
        _wait(group)
        if rank != 0 and local_rank == 0:
            prepared = prepare_data(config, tokenizer=tokenizer)
        _wait(group)
        return prepared or prepare_data(config, build=False, tokenizer=tokenizer)
    finally:
        dist.destroy_process_group(group)


def _wait(group: Any) -> None:
    try:
        dist.barrier(group=group)
    except RuntimeError:  # gloo: a peer closed its connection (it failed and exited)
        raise DataError(
            "another rank failed while preparing the data; its error is printed above"
        ) from None


def lm_examples(
    make: Callable[[TokenStore], Rows], prepared: PreparedData, config: RunConfig
) -> dict[str, Rows]:
    """{"train", "validation"}: each split's examples (`make` builds them from one store, e.g.
    an objective's packed windows), several corpora mixed by their data.mix weights; a
    stream's are built chunk by chunk as training reads them."""
    if config.data.streaming:
        from llmtune.data.streaming import StreamExamples, validation_rows

        tok = prepared.tokenizer
        return {
            "train": StreamExamples(config.data, tok, make),
            "validation": validation_rows(config, tok, make),
        }
    examples: dict[str, Rows] = {}
    for split in SPLITS:
        uses = prepared.split(split)
        parts = [make(use.store) for use in uses]
        if len(parts) == 1:
            examples[split] = parts[0]
        else:
            examples[split] = MixedRows(parts, [use.weight for use in uses], config.seed)
    return examples
