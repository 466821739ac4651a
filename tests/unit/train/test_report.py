"""The Reporter off a terminal: one plain line per log step with step/total, percent, elapsed
time and an ETA that includes the evaluations still due, at their measured cost."""

from __future__ import annotations

import time

from llmtune.config.schema import TrainConfig
from llmtune.train.report import Reporter


def _train_record(step: int) -> dict:
    return {
        "step": step,
        "loss": 2.5,
        "lr": 1e-3,
        "tokens": step * 100,
        "tokens_per_s": 100.0,
        "tflops_per_s": 0.1,
        "mfu": 0.42,
        "data_wait_share": 0.0,
    }


def test_plain_lines_carry_progress_and_an_eta_that_counts_evaluations(
    tmp_path, capsys, monkeypatch
):
    now = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    train = TrainConfig(max_steps=100, eval_every=50, save_every=1000, log_every=10)
    report = Reporter(tmp_path, train, start_step=0)
    now[0] = 10.0
    report.log(_train_record(10))  # 1 s a step
    with report.timed("eval"):
        now[0] = 15.0  # an evaluation takes 5 s
    report.log({"step": 10, "val_loss": 2.4})
    now[0] = 25.0
    report.log(_train_record(20))  # 10 steps in 10 s of training (the 5 s were evaluating)
    report.close({"steps": 20})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("step 10/100 (10%)  loss 2.5000  lr 1.00e-03  100 tok/s  MFU 42.0%")
    assert lines[1] == "eval step 10/100  loss 2.4000"
    # 80 steps x 1 s + evaluations at 50 and 100 x 5 s (the final save is not timed yet: 0)
    assert lines[2].endswith("elapsed 0:25  ETA 1:30"), lines[2]
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 3
