"""Contrastive and multi-task settings: bad keys and values are one line with exit code 2."""

from __future__ import annotations

import pytest

from tests.unit.config.test_cli_errors import run_cli

BASE = ["finetune", "init_from=/nowhere", "data.train=t.jsonl"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["objective=contrastive", "train.micro_batch_size=1", "train.global_batch_size=1"],
            "train.micro_batch_size=1: objective=contrastive contrasts each text",
        ),
        (
            ["objective=contrastive", "objective.positives=pair"],
            "objective.positives=pair needs data.text_pair_column",
        ),
        (["objective=contrastive", "model.dropout=0"], "set model.dropout>0"),
        (["objective=contrastive", "objective.pooling=max"], "objective.pooling='max'"),
        (["objective=contrastive", "objective.temperature=0"], "objective.temperature=0.0"),
        (["objective=contrastive", "objective.temprature=0.1"], "did you mean 'temperature'"),
        (["objective=multitask"], "objective=multitask needs tasks"),
        (["tasks.mlm.weight=1"], "add objective=multitask"),
        (["objective=multitask", "tasks.mlm.wieght=1"], "did you mean 'weight'"),
        (["objective=multitask", "tasks.mlmm.weight=1"], "no objective 'mlmm'; did you mean 'mlm'"),
        (["objective=multitask", "tasks.mlm.weight=-1"], "tasks.mlm.weight=-1.0: must be positive"),
        (
            ["objective=multitask", "tasks.seq_cls.weight=1", "tasks.ner.objective=token_cls"],
            "one classification task per run",
        ),
    ],
)
def test_bad_contrastive_or_multitask_config(capsys, tmp_path, args, expected):
    code, err = run_cli(capsys, *BASE, f"hydra.run.dir={tmp_path}", *args)
    assert code == 2
    assert expected in err and "\n" not in err


def test_evaluate_embedding_settings_are_checked(capsys, tmp_path):
    code, err = run_cli(
        capsys,
        "evaluate",
        f"hydra.run.dir={tmp_path}",
        "ckpt=x",
        "data.test=t.jsonl",
        "evaluate.knn_k=0",
    )
    assert code == 2 and "evaluate.knn_k=0" in err
