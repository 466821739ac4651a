"""Measure what the foundation promises: pretraining throughput and 10-minute perplexity.

Runs `llmtune pretrain` (the real CLI, in subprocesses) and summarises metrics.jsonl:
median tokens/s and MFU after warm-up, and the last validation perplexity.
  python scripts/pretrain_report.py throughput      # bert-small and gpt2-small tokens/s
  python scripts/pretrain_report.py ten-minutes     # gpt-mini, bert-small: Wikipedia, Shakespeare
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("LLMTUNE_REAL_DATA", REPO.parent / "shared" / "data"))
CORPORA = {
    "wikipedia": DATA / "corpus" / "wiki_articles.jsonl",
    "shakespeare": DATA / "corpus" / "shakespeare_gutenberg.txt",
}
THROUGHPUT = {
    "bert-small": [
        "model=bert-small",
        "train.global_batch_size=16",
        "train.micro_batch_size=16",
        "train.max_steps=40",
    ],
    "gpt2-small": [
        "model=gpt2-small",
        "model.max_seq_len=256",
        "train.global_batch_size=8",
        "train.micro_batch_size=8",
        "train.max_steps=15",
    ],
}
TEN_MINUTES = {
    "gpt-mini": ["model=gpt-mini", "optim.lr=1e-3"],
    "bert-small": ["model=bert-small", "optim.lr=5e-4"],
}


def run(run_dir: Path, overrides: list[str]) -> tuple[list[dict], list[dict]]:
    cmd = [sys.executable, "-m", "llmtune", "pretrain", f"hydra.run.dir={run_dir}", *overrides]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r], [r for r in rows if "val_loss" in r]


def throughput(tmp: Path) -> None:
    wiki = CORPORA["wikipedia"]
    for name, overrides in THROUGHPUT.items():
        train, _ = run(
            tmp / name,
            [
                *overrides,
                "data=files",
                f"data.train={wiki}",
                "tokenizer.vocab_size=30000",
                "train.log_every=1",
                "train.eval_every=100000",
                "train.save_every=100000",
            ],
        )
        steady = train[3:]  # the first steps pay for allocation and warm-up
        print(
            f"{name:>11}: median {statistics.median(r['tokens_per_s'] for r in steady):,.0f} "
            f"tokens/s, MFU {100 * statistics.median(r['mfu'] for r in steady):.1f}% "
            f"over {len(steady)} steps"
        )


def ten_minutes(tmp: Path) -> None:
    for corpus, path in CORPORA.items():
        for name, overrides in TEN_MINUTES.items():
            train, evals = run(
                tmp / f"{name}-{corpus}",
                [
                    *overrides,
                    "data=files",
                    f"data.train={path}",
                    "train.max_time=10m",
                    "train.max_steps=100000",
                    "train.eval_every=100",
                    "train.save_every=100000",
                    "train.log_every=20",
                    "optim.warmup_steps=50",
                ],
            )
            last = evals[-1]
            print(
                f"{name:>10} on {corpus:<11}: {last['step']} steps, "
                f"{train[-1]['tokens']:,} tokens, val perplexity {last['val_perplexity']:.1f} "
                f"(first eval {evals[0]['val_perplexity']:.1f})"
            )


if __name__ == "__main__":
    if not DATA.exists():
        sys.exit(f"real data not found at {DATA}; set LLMTUNE_REAL_DATA")
    with tempfile.TemporaryDirectory() as tmp:
        {"throughput": throughput, "ten-minutes": ten_minutes}[sys.argv[1]](Path(tmp))
