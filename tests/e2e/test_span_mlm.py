"""objective=span_mlm through the CLI: its keys are checked in one line, and a tiny BERT
pretrains with it and evaluates like any masked LM."""

from __future__ import annotations

import json

import pytest

from tests.e2e.helpers import TINY_BERT, TINY_GPT, evaluate, fails, metrics, pretrain


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["model=bert-tiny", "objective.mean_span_length=0.5"],
            "mean_span_length=0.5: must be >= 1",
        ),
        (["model=bert-tiny", "objective.max_span_length=0"], "max_span_length=0: must be >= 1"),
        (["objective.nsp_prob=0.5"], "'objective.nsp_prob' is a key of objective.name=mlm_nsp"),
        ([*TINY_GPT], "objective=span_mlm needs a bert model"),  # an encoder objective
    ],
)
def test_bad_span_settings_are_one_line(capsys, tmp_path, args, expected):
    err = fails(capsys, "pretrain", "objective=span_mlm", *args, f"hydra.run.dir={tmp_path}")
    assert expected in err


def test_a_tiny_bert_pretrains_and_evaluates_with_span_masking(tmp_path, tiny_corpus):
    run = tmp_path / "run"
    pretrain(run, tiny_corpus, *TINY_BERT, "objective=span_mlm", "train.max_steps=12")
    train, val = metrics(run)
    assert train[-1]["loss"] < train[0]["loss"] and "val_mlm_accuracy" in val[-1]
    meta = json.loads((run / "checkpoints" / "step-00000012" / "meta.json").read_text())
    assert meta["objective"] == "span_mlm" and meta["heads"] == ["mlm"]
    results = evaluate(tmp_path / "eval", f"ckpt={run}", f"data.test={tiny_corpus}")
    assert results["n_targets"] > 0 and results["loss"] > 0
