"""data.packing and train.max_epochs settings: a bad combination is one line with exit code 2."""

from __future__ import annotations

import pytest

from tests.unit.config.test_cli_errors import run_cli

FINETUNE = ["finetune", "init_from=/nowhere", "data.train=t.jsonl"]
STREAM = ["pretrain", "data=hub", "data.name=x", "data.streaming=true", "tokenizer.train_docs=9"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            [*FINETUNE, "objective=seq_cls", "data.packing=true"],
            "data.packing=true packs the labelled examples of objective=distill_sft|sft, not "
            "objective=seq_cls's; drop data.packing",
        ),
        (
            ["pretrain", "data=files", "data.train=t.txt", "objective=clm", "data.packing=true"],
            "not objective=clm's",
        ),
        (
            [*FINETUNE, "objective=sft", "data.packing=true", "method=prompt"],
            "data.packing=true: method=prompt puts its own positions before each row",
        ),
        (
            [*FINETUNE, "objective=sft", "data=hub", "data.name=x", "data.packing=true"],
            "'data.packing' is a key of data.source=files",
        ),
        ([*FINETUNE, "data.packing=maybe"], "data.packing"),
        ([*FINETUNE, "train.max_epochs=-1"], "train.max_epochs=-1: must be >= 0 (0 = off)"),
        (
            [*STREAM, "train.max_epochs=2"],
            "train.max_epochs=2: a stream (data.streaming=true) has no known size",
        ),
    ],
)
def test_bad_packing_or_epochs_config(capsys, tmp_path, args, expected):
    code, err = run_cli(capsys, *args, f"hydra.run.dir={tmp_path}")
    assert code == 2
    assert expected in err and "\n" not in err
