"""Run folders read back for `llmtune report`: resumed runs, the best checkpoint, sweeps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmtune.errors import DataError
from llmtune.plots.runs import find_runs, load_run


def _run(folder: Path, records: list[dict], overrides: list[str], best: int | None = None) -> Path:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (folder / ".hydra" / "config.yaml").write_text(
        "command: pretrain\ntrain:\n  best_metric: val_loss\n"
    )
    lines = [json.dumps(r) for r in records]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 9, "lo')  # cut short
    if best is not None:
        (folder / "checkpoints").mkdir()
        (folder / "checkpoints" / "best").write_text(f"step-{best:08d}\n")
    return folder


def test_a_resumed_run_keeps_the_newest_record_of_each_step(tmp_path):
    records = [
        {"step": 1, "loss": 3.0},
        {"step": 2, "loss": 2.9},
        {"step": 2, "val_loss": 2.8},
        {"step": 2, "loss": 2.5},  # after a resume from step 1
        {"step": 3, "loss": 2.4},
    ]
    run = load_run(_run(tmp_path / "r", records, ["optim.lr=0.001"], best=2))
    assert [r["loss"] for r in run.train] == [3.0, 2.5, 2.4]
    assert run.evals == [{"step": 2, "val_loss": 2.8}] and run.best_step == 2
    assert run.final() == {"step": 3, "loss": 2.4, "val_loss": 2.8}


def test_a_sweep_folder_gives_its_jobs_named_by_what_differs(tmp_path):
    for i, lr in enumerate(["0.001", "0.003"]):
        _run(
            tmp_path / "sweep" / str(i), [{"step": 1, "loss": 1.0}], ["seed=1", f"++optim.lr={lr}"]
        )
    runs, several = find_runs([str(tmp_path / "sweep")])
    assert several and [r.label for r in runs] == ["optim.lr=0.001", "optim.lr=0.003"]


def test_a_folder_without_runs_is_refused_in_one_line(tmp_path):
    with pytest.raises(DataError, match="holds no metrics.jsonl or results.json"):
        find_runs([str(tmp_path)])
