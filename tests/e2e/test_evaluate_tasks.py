"""`llmtune evaluate` on fine-tuned task checkpoints (seq_cls, token_cls, sft): metrics agree
with the validation metrics finetune stored on the same file; unlabelled splits are predicted."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from llmtune.cli import main
from tests.conftest import make_documents
from tests.e2e.helpers import (
    FAST,
    TINY_BERT,
    TINY_GPT,
    evaluate,
    pretrain,
    read_jsonl,
    write_jsonl,
)

SHORT = ["train.max_steps=12", "train.eval_every=12", "train.save_every=12"]


def _task_rows(rng: random.Random) -> dict[str, list[dict]]:
    words = ["bright", "quiet", "ancient", "red", "the", "river", "walks"]
    cls = [
        {"text": " ".join(rng.choices(words, k=6)), "label": ["neg", "pos"][i % 2]}
        for i in range(40)
    ]
    ner = []
    for _ in range(30):
        tokens, tags = [], []
        for _ in range(4):
            if rng.random() < 0.3:
                tokens, tags = [*tokens, "north", "city"], [*tags, "B-LOC", "I-LOC"]
            else:
                tokens, tags = [*tokens, rng.choice(words)], [*tags, "O"]
        ner.append({"tokens": tokens, "tags": tags})
    sft = [{"instruction": f"name {w}", "response": f"the {w} river"} for w in words * 3]
    return {"cls": cls, "ner": ner, "sft": sft}


def _finetune(run: Path, base: Path, train: Path, test: Path, *overrides: str) -> Path:
    main(
        [
            "finetune",
            f"hydra.run.dir={run}",
            f"init_from={base}",
            "data=files",
            f"data.train={train}",
            f"data.validation={test}",
            *FAST,
            *SHORT,
            *overrides,
        ]
    )
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tasks")
    corpus = write_jsonl(root / "corpus.jsonl", [{"text": d} for d in make_documents(120)])
    pretrain(root / "bert", corpus, *TINY_BERT, *SHORT)
    pretrain(root / "gpt", corpus, *TINY_GPT, *SHORT)
    out: dict[str, Path] = {}
    for name, rows in _task_rows(random.Random(0)).items():
        out[f"{name}_train"] = write_jsonl(root / f"{name}_train.jsonl", rows[: len(rows) * 2 // 3])
        out[f"{name}_test"] = write_jsonl(root / f"{name}_test.jsonl", rows[len(rows) * 2 // 3 :])
    args = {"cls": ["objective=seq_cls"], "ner": ["objective=token_cls"]}
    for name in ("cls", "ner"):
        out[name] = _finetune(
            root / name, root / "bert", out[f"{name}_train"], out[f"{name}_test"], *args[name]
        )
    out["cls_lora"] = _finetune(
        root / "cls_lora",
        root / "bert",
        out["cls_train"],
        out["cls_test"],
        "objective=seq_cls",
        "method=lora",
    )
    out["sft"] = _finetune(
        root / "sft",
        root / "gpt",
        out["sft_train"],
        out["sft_test"],
        "objective=sft",
        "objective.prompt_template='Q: {instruction} A:'",
    )
    return out


def _stored_metrics(run: Path) -> dict:
    step = sorted((run / "checkpoints").glob("step-*"))[-1]
    return json.loads((step / "meta.json").read_text())["metrics"]


@pytest.mark.parametrize("run", ["cls", "cls_lora"])  # a full and an adapter checkpoint
def test_seq_cls_metrics_match_finetune_validation(tmp_path, runs, run):
    results = evaluate(tmp_path / "e", f"ckpt={runs[run]}", f"data.test={runs['cls_test']}")
    stored = _stored_metrics(runs[run])
    assert results["task"] == "seq_cls" and results["n_examples"] == 14
    assert results["accuracy"] == pytest.approx(stored["val_accuracy"])
    assert results["f1_macro"] == pytest.approx(stored["val_f1_macro"])
    assert results["confusion_matrix"]["labels"] == ["neg", "pos"]
    rows = read_jsonl(tmp_path / "e" / "predictions.jsonl")
    assert len(rows) == 14 and {"text", "label", "prediction", "confidence"} <= set(rows[0])


def test_seq_cls_without_labels_writes_predictions_only(tmp_path, runs):
    unlabelled = write_jsonl(tmp_path / "u.jsonl", [{"text": "the quiet river"}, {"text": "red"}])
    results = evaluate(tmp_path / "e", f"ckpt={runs['cls']}", f"data.test={unlabelled}")
    assert "accuracy" not in results and results["n_examples"] == 2
    rows = read_jsonl(tmp_path / "e" / "predictions.jsonl")
    assert [r["prediction"] in ("neg", "pos") for r in rows] == [True, True]


def test_token_cls_reports_entities_per_type(tmp_path, runs):
    results = evaluate(tmp_path / "e", f"ckpt={runs['ner']}", f"data.test={runs['ner_test']}")
    assert results["task"] == "token_cls" and "entity_f1" in results
    assert set(results["per_type"]) == {"LOC"}
    stored = _stored_metrics(runs["ner"])
    assert results["token_accuracy"] == pytest.approx(stored["val_accuracy"])
    # validation during finetune scores entities with the same code, on the same file
    assert results["entity_f1"] == pytest.approx(stored["val_entity_f1"])
    assert results["per_type"]["LOC"]["f1"] == pytest.approx(stored["val_entity_f1/LOC"])
    rows = read_jsonl(tmp_path / "e" / "predictions.jsonl")
    assert all(len(r["prediction"]) == len(r["tokens"]) == len(r["tags"]) for r in rows)


def test_sft_response_loss_and_templated_generation(tmp_path, runs):
    results = evaluate(
        tmp_path / "e",
        f"ckpt={runs['sft']}",
        f"data.test={runs['sft_test']}",
        "prompts=[name red]",
        "evaluate.max_new_tokens=4",
    )
    assert results["task"] == "sft"
    assert results["loss"] == pytest.approx(_stored_metrics(runs["sft"])["val_sft_loss"], rel=1e-5)
    assert read_jsonl(tmp_path / "e" / "generations.jsonl")[0]["prompt"] == "name red"
    instructions = write_jsonl(tmp_path / "i.jsonl", [{"instruction": "name river"}])
    evaluate(
        tmp_path / "p",
        f"ckpt={runs['sft']}",
        f"data.test={instructions}",
        "evaluate.max_new_tokens=4",
    )
    answers = read_jsonl(tmp_path / "p" / "predictions.jsonl")
    assert answers[0]["instruction"] == "name river" and "prediction" in answers[0]
