"""End-to-end T5 through the real CLI, in-process: span-corruption pretraining, seq2seq
fine-tuning with every method, evaluate's generated targets and their metrics, prompts."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from llmtune.cli import main
from tests.e2e.helpers import FAST, evaluate, metrics, pretrain, write_jsonl

TINY_T5 = ["model=t5-tiny", "model.max_seq_len=32", "tokenizer.vocab_size=400"]
WORDS = [
    "red",
    "green",
    "blue",
    "cat",
    "dog",
    "bird",
    "river",
    "hill",
    "tree",
    "stone",
    "cloud",
    "rain",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from tests.conftest import make_documents

    docs = [{"text": d + " " + " ".join(WORDS)} for d in make_documents(100)]
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "c.jsonl", docs)


@pytest.fixture(scope="module")
def t5_base(tmp_path_factory, corpus) -> Path:
    run = tmp_path_factory.mktemp("t5") / "run"
    pretrain(run, corpus, *TINY_T5, "train.max_steps=30", "train.eval_every=10")
    return run


def pair_rows(n: int, seed: int) -> list[dict]:
    """target = the source's first two words: learnable only through cross-attention."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 6))]
        rows.append({"source": " ".join(words), "target": " ".join(words[:2])})
    return rows


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> tuple[Path, Path, Path]:
    folder = tmp_path_factory.mktemp("pairs")
    return (
        write_jsonl(folder / "train.jsonl", pair_rows(256, 1)),
        write_jsonl(folder / "val.jsonl", pair_rows(32, 2)),
        write_jsonl(folder / "test.jsonl", pair_rows(24, 3)),
    )


def test_span_corruption_pretraining_loss_falls(t5_base):
    train, evals = metrics(t5_base)
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert train[-1]["loss"] < train[0]["loss"]
    assert "val_span_corruption_accuracy" in evals[-1]
    step = t5_base / "checkpoints" / (t5_base / "checkpoints" / "latest").read_text().strip()
    config = (step / "config.yaml").read_text()
    assert "family: t5" in config and "name: span_corruption" in config


METHODS = {
    "full": [],
    "freeze": ["method.freeze_layers=2"],
    "lora": ["method.rank=8", "method.targets=[qkv,q,kv,fc]", "optim.lr=1e-2"],
    "prefix": ["method.n_tokens=4", "optim.lr=3e-2"],
    "prompt": ["method.n_tokens=4", "optim.lr=3e-2"],
}


@pytest.mark.parametrize("method", list(METHODS))
def test_seq2seq_finetune_with_every_method_learns_and_generates(t5_base, pairs, tmp_path, method):
    train, val, test = pairs
    run = tmp_path / "ft"
    main(
        [
            "finetune",
            f"hydra.run.dir={run}",
            f"init_from={t5_base}",
            "objective=seq2seq",
            "data=files",
            f"data.train={train}",
            f"data.validation={val}",
            f"method={method}",
            *FAST,
            "train.max_steps=40",
            "train.eval_every=20",
            "train.log_every=10",
            *METHODS[method],
        ]
    )
    _, evals = metrics(run)
    assert evals[-1]["val_seq2seq_loss"] < evals[0]["val_seq2seq_loss"]
    results = evaluate(
        tmp_path / "eval",
        f"ckpt={run}",
        "data=files",
        f"data.test={test}",
        "evaluate.max_new_tokens=6",
        "evaluate.num_beams=2",
    )
    assert results["task"] == "seq2seq" and results["n_examples"] == 24
    for key in ("exact_match", "rouge1", "rouge2", "rougeL", "bleu", "chrf", "loss"):
        assert key in results, key
    rows = [
        json.loads(r) for r in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 24 and {"source", "prediction", "target"} <= set(rows[0])
