"""Faults during training lose nothing: kill -9 mid-save, disk full, damaged checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from llmtune import checkpoint
from tests.e2e.helpers import FAST, TINY_GPT, metrics, pretrain

COMMON = [*TINY_GPT, "train.max_steps=9", "train.save_every=3", "train.eval_every=3"]


def pretrain_subprocess(run_dir, corpus, fault: str) -> int:
    """Run the CLI in a child process with LLMTUNE_FAULT set; return its exit code."""
    env = {**os.environ, "LLMTUNE_FAULT": fault}
    args = [
        "pretrain",
        f"hydra.run.dir={run_dir}",
        "data=files",
        f"data.train={corpus}",
        *FAST,
        *COMMON,
    ]
    return subprocess.run(
        [sys.executable, "-m", "llmtune", *args], env=env, capture_output=True, timeout=300
    ).returncode


@pytest.fixture
def straight_losses(tmp_path, jsonl_corpus):
    pretrain(tmp_path / "straight", jsonl_corpus, *COMMON)
    return [r["loss"] for r in metrics(tmp_path / "straight")[0]]


@pytest.mark.parametrize(
    "point",
    [
        "checkpoint.after_weights",
        pytest.param("checkpoint.before_rename", marks=pytest.mark.slow),
        pytest.param("checkpoint.before_latest", marks=pytest.mark.slow),
    ],
)
def test_kill_9_while_saving_then_resume_matches(tmp_path, jsonl_corpus, straight_losses, point):
    run = tmp_path / "killed"
    assert pretrain_subprocess(run, jsonl_corpus, f"{point}@2:kill") == -9
    root = run / "checkpoints"
    assert (root / "latest").read_text().strip() == "step-00000003"
    checkpoint.verify(root / "step-00000003")
    pretrain(run, jsonl_corpus, *COMMON)  # checkpoint.resume=auto
    assert not list(root.glob(".tmp-*"))
    losses = {r["step"]: r["loss"] for r in metrics(run)[0]}  # steps 4-6 ran twice
    assert [losses[s] for s in range(1, 10)] == straight_losses


def test_disk_full_while_saving_is_one_line_and_loses_nothing(
    tmp_path, jsonl_corpus, monkeypatch, capsys
):
    monkeypatch.setenv("LLMTUNE_FAULT", "checkpoint.after_weights@2:disk_full")
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        pretrain(run, jsonl_corpus, *COMMON, "checkpoint.keep_last=1")
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert "No space left on device" in err and "nothing was pruned" in err
    root = run / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["best", "latest", "step-00000003"]
    checkpoint.verify(root / "step-00000003")


def test_damaged_latest_is_refused_unless_fallback_is_asked(tmp_path, jsonl_corpus, capsys):
    run = tmp_path / "run"
    pretrain(run, jsonl_corpus, *COMMON, "train.max_steps=6")
    weights = run / "checkpoints" / "step-00000006" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        pretrain(run, jsonl_corpus, *COMMON)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "step-00000006/model.safetensors: checksum mismatch" in err
    assert "checkpoint.fallback=true" in err
    pretrain(run, jsonl_corpus, *COMMON, "checkpoint.fallback=true")
    out = capsys.readouterr().out
    assert "falling back to" in out and "step-00000003" in out
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000009"


def test_same_seed_same_losses_other_seed_differs(tmp_path, jsonl_corpus):
    runs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        pretrain(tmp_path / name, jsonl_corpus, *TINY_GPT, "train.max_steps=4", f"seed={seed}")
        runs[name] = [r["loss"] for r in metrics(tmp_path / name)[0]]
    assert runs["a"] == runs["b"] and runs["a"] != runs["c"]


def test_credentials_never_reach_output_or_run_dir(tmp_path, jsonl_corpus, monkeypatch, capsys):
    secret = "hf_SECRETVALUE12345"
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        pretrain(run, jsonl_corpus, *TINY_GPT, f"+api_key={secret}")
    assert exit_info.value.code == 2
    assert secret not in capsys.readouterr().err and not run.exists()
    monkeypatch.setenv("HF_TOKEN", secret)
    pretrain(run, jsonl_corpus, *TINY_GPT, "train.max_steps=1")
    out = capsys.readouterr()
    assert secret not in out.out + out.err
    for path in run.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
