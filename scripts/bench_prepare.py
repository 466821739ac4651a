"""Tokenization throughput of `llmtune prepare` against its limit (issue 20).

Builds the train token store of a real-text corpus (the shared corpus folder, ~6M tokens)
with data.num_proc=1 (one process, the tokenizer library's own threads) and 2 (two worker
processes), and times the tokenizers library tokenizing the same documents already in
memory with `encode_batch` and `encode_batch_fast` (all threads): no reading, cleaning or
writing, so the speed the store build can at best reach. Rounds interleave the four, on the
same machine, and the medians and ratios are printed.

  python scripts/bench_prepare.py [--rounds 3] [--work /tmp/bench-prepare]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datastore_rss import write_corpus  # noqa: E402  (the same corpus builder)

from llmtune.config.schema import DataConfig, TokenizerConfig  # noqa: E402
from llmtune.data.pipeline import build_store, corpora  # noqa: E402
from llmtune.data.tokenizer import get_tokenizer  # noqa: E402


def limit(tok, texts: list[str], fast: bool) -> float:
    """tokens/s of the library alone on documents in memory, batches of 1,000."""
    encode = tok.encode_batch_fast if fast else tok.encode_batch
    started, n = time.perf_counter(), 0
    for start in range(0, len(texts), 1000):
        n += sum(len(e.ids) for e in encode(texts[start : start + 1000], add_special_tokens=False))
    return n / (time.perf_counter() - started)


def prepare(split, tok, work: Path, num_proc: int) -> float:
    """tokens/s of building the split's token store (read, clean, tokenize, write)."""
    root = work / f"stores-{num_proc}"
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    store = build_store(split, tok, root, "bench", num_proc)
    return store.n_tokens / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", default="/tmp/bench-prepare")
    args = parser.parse_args()
    if os.environ.get("TOKENIZERS_PARALLELISM", "").lower() in ("0", "false"):
        sys.exit("unset TOKENIZERS_PARALLELISM: the single-process build uses the threads")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus.jsonl"
    write_corpus(corpus, 5e6)
    data = DataConfig(source="files", train=str(corpus), cache_dir=str(work / "cache"))
    split = corpora(data, 0)[0][2]["train"]
    tok = get_tokenizer(TokenizerConfig(kind="bpe", train_docs=20000), "bpe", [split], work)
    texts = [doc for batch in split.batches() for doc in batch]
    runs: dict[str, list[float]] = {}
    for r in range(args.rounds):
        for name, fn in (
            ("encode_batch (limit)", lambda: limit(tok, texts, False)),
            ("encode_batch_fast (limit)", lambda: limit(tok, texts, True)),
            ("prepare, data.num_proc=1", lambda: prepare(split, tok, work, 1)),
            ("prepare, data.num_proc=2", lambda: prepare(split, tok, work, 2)),
        ):
            runs.setdefault(name, []).append(fn())
            print(f"round {r + 1}: {name:<28} {runs[name][-1]:>12,.0f} tokens/s", flush=True)
    best = statistics.median(runs["encode_batch (limit)"])
    print(f"\n{len(texts):,} documents, {os.cpu_count()} cores; medians of {args.rounds} rounds:")
    for name, values in runs.items():
        median = statistics.median(values)
        print(f"{name:<28} {median:>12,.0f} tokens/s  {median / best:5.2f} x encode_batch")


if __name__ == "__main__":
    main()
