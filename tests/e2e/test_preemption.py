"""Preemption: a signal saves at the next step boundary and exits 75; resuming matches an
uninterrupted run exactly. Non-finite gradients stop the run, or skip the step when asked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from llmtune import checkpoint
from llmtune.train import parallel, preemption
from tests.e2e.helpers import FAST, TINY_GPT, metrics, pretrain

# Long enough to be signalled while training (each tiny step takes a few milliseconds).
COMMON = [*TINY_GPT, "train.max_steps=60", "train.eval_every=1000", "train.save_every=1000"]


def _start(run_dir, corpus) -> subprocess.Popen:
    args = ["pretrain", f"hydra.run.dir={run_dir}", "data=files", f"data.train={corpus}"]
    return subprocess.Popen(
        [sys.executable, "-m", "llmtune", *args, *FAST, *COMMON],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_step(run_dir, proc: subprocess.Popen, step: int) -> None:
    deadline = time.monotonic() + 120
    path = run_dir / "metrics.jsonl"
    while time.monotonic() < deadline and proc.poll() is None:
        if path.is_file() and len(path.read_text().splitlines()) >= step:
            return
        time.sleep(0.05)
    pytest.fail("the run did not reach the step in time")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_saves_then_resume_matches_uninterrupted(tmp_path, jsonl_corpus, sig):
    straight, run = tmp_path / "straight", tmp_path / "run"
    proc = _start(run, jsonl_corpus)
    _wait_for_step(run, proc, 3)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == preemption.EXIT_CODE, err[-2000:]
    assert f"stopped by {sig.name}" in err and "run the same command again" in err
    latest = checkpoint.read_pointer(run / "checkpoints", "latest")
    checkpoint.verify(latest)
    stopped_at = json.loads((latest / "meta.json").read_text())["step"]
    assert 3 <= stopped_at < 60
    assert [r["step"] for r in metrics(run)[0]][-1] == stopped_at  # saved at the boundary

    pretrain(run, jsonl_corpus, *COMMON)  # the requeued job: checkpoint.resume=auto
    pretrain(straight, jsonl_corpus, *COMMON)
    resumed = {r["step"]: r["loss"] for r in metrics(run)[0]}
    assert list(resumed) == list(range(1, 61))
    assert list(resumed.values()) == [r["loss"] for r in metrics(straight)[0]]


def _poison_step(monkeypatch, step: int) -> None:
    """Make the loss (so every gradient) NaN on the given step's forward."""
    calls = {"n": 0}
    forward = parallel._ObjectiveForward.forward

    def poisoned(self, batch):
        terms = forward(self, batch)
        if self.model.training:
            calls["n"] += 1
            if calls["n"] == step:
                for term in terms.values():
                    term.loss_sum = term.loss_sum * float("nan")
        return terms

    monkeypatch.setattr(parallel._ObjectiveForward, "forward", poisoned)


def test_nonfinite_gradients_stop_with_a_clear_message(tmp_path, jsonl_corpus, monkeypatch, capsys):
    _poison_step(monkeypatch, 3)
    with pytest.raises(SystemExit) as exit_info:
        pretrain(tmp_path / "run", jsonl_corpus, *TINY_GPT, "train.max_steps=5")
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert "non-finite gradient norm at step 3" in err and "train.on_nonfinite=skip" in err


def test_nonfinite_gradients_skip_the_step_when_asked(tmp_path, jsonl_corpus, monkeypatch):
    _poison_step(monkeypatch, 3)
    run = tmp_path / "run"
    pretrain(run, jsonl_corpus, *TINY_GPT, "train.max_steps=5", "train.on_nonfinite=skip")
    losses = [r["loss"] for r in metrics(run)[0]]
    assert len(losses) == 5 and torch.isnan(torch.tensor(losses[2]))
    assert all(torch.isfinite(torch.tensor(losses[i])) for i in (0, 1, 3, 4))
    step_dir = checkpoint.resolve(run)
    weights = checkpoint.load_weights(step_dir)
    assert all(torch.isfinite(w).all() for w in weights.values())  # never updated with NaN
    state = checkpoint.load_train_state(step_dir)
    assert state["progress"]["skipped_steps"] == 1 and state["progress"]["step"] == 5


def test_nonfinite_policy_is_checked(tmp_path, jsonl_corpus, capsys):
    with pytest.raises(SystemExit):
        pretrain(tmp_path / "run", jsonl_corpus, *TINY_GPT, "train.on_nonfinite=ignore")
    assert "train.on_nonfinite='ignore': expected one of stop, skip" in capsys.readouterr().err


def test_several_processes_need_a_parallel_strategy(tmp_path, jsonl_corpus, capsys):
    with pytest.raises(SystemExit):
        pretrain(tmp_path / "run", jsonl_corpus, *TINY_GPT, "hardware.nproc=2")
    assert "need hardware=ddp or hardware=fsdp" in capsys.readouterr().err


def test_signal_handlers_are_restored(tmp_path, jsonl_corpus):
    before = signal.getsignal(signal.SIGTERM)
    pretrain(tmp_path / "run", jsonl_corpus, *TINY_GPT, "train.max_steps=1")
    assert signal.getsignal(signal.SIGTERM) is before
    assert os.environ.get("RANK") is None
