"""Drive `llmtune` in-process with tiny settings and read back what a run wrote."""

from __future__ import annotations

import json
from pathlib import Path

from llmtune.cli import main

TINY_GPT = [
    "model=gpt-tiny",
    "model.d_model=64",
    "model.n_heads=2",
    "model.d_ff=128",
    "model.max_seq_len=32",
    "tokenizer.vocab_size=400",
]
TINY_LLAMA = [
    "model=llama-tiny",
    "model.d_model=64",
    "model.n_heads=4",
    "model.n_kv_heads=2",
    "model.d_ff=128",
    "model.max_seq_len=32",
    "tokenizer.vocab_size=400",
]
TINY_BERT = [
    "model=bert-tiny",
    "model.d_model=64",
    "model.n_heads=2",
    "model.d_ff=128",
    "model.max_seq_len=32",
    "tokenizer.vocab_size=400",
]
FAST = [
    "train.global_batch_size=8",
    "train.micro_batch_size=8",
    "train.log_every=1",
    "train.eval_batches=4",
    "optim.lr=2e-3",
    "optim.warmup_steps=2",
    "hardware=cpu",
]


def pretrain(run_dir: Path, corpus: Path, *overrides: str) -> None:
    main(
        [
            "pretrain",
            f"hydra.run.dir={run_dir}",
            "data=files",
            f"data.train={corpus}",
            *FAST,
            *overrides,
        ]
    )


def evaluate(run_dir: Path, *overrides: str) -> dict:
    """Run `llmtune evaluate` on CPU; its results.json."""
    main(["evaluate", f"hydra.run.dir={run_dir}", "hardware=cpu", *overrides])
    return json.loads((run_dir / "results.json").read_text())


def read_jsonl(path: Path) -> list[dict]:
    # split on newlines only: str.splitlines also breaks at U+2028 and friends, which real
    # review texts hold inside their JSON strings
    return [json.loads(line) for line in path.read_text().split("\n") if line]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(train records, eval records) from metrics.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r], [r for r in rows if "val_loss" in r]


def fails(capsys, *argv: str, code: int = 2) -> str:
    """Run `llmtune argv` in-process; assert exit `code` and ONE line on stderr; return it."""
    import pytest

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == code, err
    assert err.startswith("llmtune: error: ") and len(err.splitlines()) == 1, err
    return err
