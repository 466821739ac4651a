"""End-to-end contrastive and multi-task fine-tuning through the real CLI, in-process, on a
tiny pretrained BERT: checkpoints, validation metrics, embedding evaluation, bad input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from llmtune.cli import main
from llmtune.loading import load_checkpoint
from llmtune.models.pooling import sentence_embedding
from tests.e2e.helpers import metrics
from tests.e2e.test_finetune import _write, bert_base, corpus, finetune, sentiment  # noqa: F401

SHORT = ["train.max_steps=6", "train.eval_every=6", "train.save_every=6"]


def evaluate(out: Path, ckpt, test: Path, *extra: str) -> dict:
    main(["evaluate", f"hydra.run.dir={out}", f"ckpt={ckpt}", f"data.test={test}", *extra])
    return json.loads((out / "results.json").read_text())


def test_label_contrastive_run_and_embedding_evaluation(tmp_path, bert_base, sentiment):  # noqa: F811
    train, val = sentiment
    run = tmp_path / "ctr"
    finetune(
        run,
        bert_base,
        "objective=contrastive",
        "objective.positives=label",
        "objective.pooling=cls",
        f"data.train={train}",
        f"data.validation={val}",
        "train.best_metric=val_contrastive_accuracy",
        *SHORT,
    )
    _, evals = metrics(run)
    assert {"val_contrastive_loss", "val_contrastive_accuracy"} <= set(evals[-1])
    loaded = load_checkpoint(run)
    model, config, meta = loaded.model, loaded.config, loaded.meta
    assert meta["objective"] == "contrastive" and meta["heads"] == [] and not model.heads
    assert (run / "checkpoints" / "best").exists()
    assert config.objective.pooling == "cls"  # where an exporter finds the pooling
    results = evaluate(tmp_path / "ev", run, val, f"data.train={train}")
    assert results["task"] == "embeddings" and results["pooling"] == "cls"
    assert results["n_examples"] == 64 and results["n_train_examples"] > 200
    assert 0 <= results["knn_accuracy"] <= 1 and 0 <= results["linear_probe_accuracy"] <= 1
    # any encoder checkpoint scores the same way: the base, before contrastive training
    before = evaluate(tmp_path / "ev0", bert_base, val, "evaluate.embeddings=true")
    assert before["objective"] == "mlm" and before["pooling"] == "mean"
    _check_sentence_encoder_export(tmp_path, run)


@torch.no_grad()
def _check_sentence_encoder_export(tmp_path: Path, run: Path) -> None:
    """hf: a BertModel folder with sentence-transformers' pooling files whose cls-pooled,
    normalised output equals llmtune's embedding; onnx: the same vectors from onnxruntime."""
    transformers = pytest.importorskip("transformers")
    ort = pytest.importorskip("onnxruntime")
    for fmt in ("hf", "onnx"):
        main(
            [
                "export",
                f"ckpt={run}",
                f"format={fmt}",
                f"out={tmp_path / fmt}",
                f"hydra.run.dir={tmp_path / fmt}.run",
            ]
        )
    pooling = json.loads((tmp_path / "hf" / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_cls_token"] and not pooling["pooling_mode_mean_tokens"]
    modules = json.loads((tmp_path / "hf" / "modules.json").read_text())
    assert [m["path"] for m in modules] == ["", "1_Pooling", "2_Normalize"]
    texts = ["a good film", "a bad and dull film with no story"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    hidden = transformers.AutoModel.from_pretrained(tmp_path / "hf")(**batch).last_hidden_state
    theirs = torch.nn.functional.normalize(hidden[:, 0], dim=-1)
    model = load_checkpoint(run).model
    ours = sentence_embedding(
        model.eval(), batch["input_ids"], batch["attention_mask"], "cls", batch["token_type_ids"]
    )
    torch.testing.assert_close(
        theirs, torch.nn.functional.normalize(ours, dim=-1), atol=1e-5, rtol=0
    )
    session = ort.InferenceSession(str(next((tmp_path / "onnx").glob("*.onnx"))))
    feeds = {i.name: batch[i.name].numpy() for i in session.get_inputs()}
    (onnx_out,) = session.run(["sentence_embedding"], feeds)
    torch.testing.assert_close(torch.from_numpy(onnx_out), theirs, atol=1e-4, rtol=0)


def _pairs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    words = ["river", "stone", "light", "garden", "road", "winter", "music", "paper"]
    rows = []
    for _ in range(n):
        text = " ".join(rng.sample(words, 4))
        rows.append(
            {
                "q": text,
                "pos": text + " " + rng.choice(words),
                "neg": " ".join(rng.sample(words, 4)),
            }
        )
    return rows


def test_pair_contrastive_with_hard_negatives(tmp_path, bert_base):  # noqa: F811
    train = _write(tmp_path / "pairs.jsonl", _pairs(96, 0))
    run = tmp_path / "pairs"
    finetune(
        run,
        bert_base,
        "objective=contrastive",
        "data.text_column=q",
        "data.text_pair_column=pos",
        "data.negative_column=neg",
        f"data.train={train}",
        *SHORT,
    )
    _, evals = metrics(run)
    assert evals[-1]["val_contrastive_accuracy"] > 0.3  # chance: 1 of 2 x micro-batch keys


def test_missing_negative_column_is_one_line(tmp_path, bert_base, capsys):  # noqa: F811
    train = _write(tmp_path / "pairs.jsonl", _pairs(32, 0))
    with pytest.raises(SystemExit) as exit_info:
        finetune(
            tmp_path / "bad",
            bert_base,
            "objective=contrastive",
            "data.text_column=q",
            "data.text_pair_column=pos",
            "data.negative_column=negative",
            f"data.train={train}",
        )
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "no column 'negative'" in err
    assert "data.negative_column" in err or "data.*_column" in err


def test_multitask_mlm_and_seq_cls_one_checkpoint(tmp_path, bert_base, corpus, sentiment):  # noqa: F811
    train, val = sentiment
    run = tmp_path / "mt"
    finetune(
        run,
        bert_base,
        "objective=multitask",
        f"data.train={train}",
        f"data.validation={val}",
        f"tasks.mlm.train={corpus}",
        "tasks.mlm.weight=0.5",
        "tasks.seq_cls.weight=1",
        "train.best_metric=val_seq_cls_f1_macro",
        *SHORT,
    )
    _, evals = metrics(run)
    assert {"val_mlm_loss", "val_seq_cls_accuracy", "val_seq_cls_f1_macro"} <= set(evals[-1])
    loaded = load_checkpoint(run)
    model, config, meta = loaded.model, loaded.config, loaded.meta
    assert meta["objective"] == "multitask" and meta["heads"] == ["mlm", "seq_cls"]
    assert meta["labels"] == ["neg", "pos"] and config.tasks["mlm"].weight == 0.5
    assert set(model.heads) == {"mlm", "seq_cls"}


def test_cls_pooling_on_gpt_is_refused(tmp_path, capsys):
    from tests.conftest import make_documents
    from tests.e2e.helpers import TINY_GPT, pretrain

    text = _write(tmp_path / "c.jsonl", [{"text": d} for d in make_documents(40)])
    pretrain(tmp_path / "gpt", text, *TINY_GPT, "train.max_steps=1")
    with pytest.raises(SystemExit) as exit_info:
        finetune(
            tmp_path / "bad",
            tmp_path / "gpt",
            "objective=contrastive",
            "objective.pooling=cls",
            f"data.train={text}",
        )
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "objective.pooling=cls needs a bert model" in err
