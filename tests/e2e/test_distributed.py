"""Two gloo processes reproduce one process (DDP and FSDP2); FSDP checkpoints are single-file
and resume anywhere; a dead worker ends the job quickly with a clear error."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from llmtune import checkpoint
from tests.e2e.helpers import FAST, TINY_GPT, metrics, pretrain

# No dropout: each process draws its own masks, so only a deterministic model compares.
COMMON = [
    *TINY_GPT,
    "model.dropout=0",
    "model.attn_dropout=0",
    "train.max_steps=6",
    "train.eval_every=3",
    "train.save_every=3",
]
TOL = 1e-5  # float reduction order differs between 1 and 2 processes


def pretrain_procs(run_dir, corpus, nproc: int, strategy: str, *overrides, env=None):
    """`llmtune pretrain hardware=<strategy> hardware.nproc=N` in a child process."""
    args = [
        "pretrain",
        f"hydra.run.dir={run_dir}",
        "data=files",
        f"data.train={corpus}",
        *FAST,
        f"hardware={strategy}",
        "hardware.device=cpu",
        f"hardware.nproc={nproc}",
        "hardware.timeout=60s",
        # the global batch of 8 as 4 rows per process
        f"train.micro_batch_size={8 // nproc}",
        *overrides,
    ]
    return subprocess.run(
        [sys.executable, "-m", "llmtune", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=240,
    )


def _close(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b)
    return max(abs(x - y) / max(1.0, abs(x)) for x, y in zip(a, b, strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_reproduce_one(tmp_path, jsonl_corpus, strategy):
    one, two = tmp_path / "one", tmp_path / "two"
    pretrain(one, jsonl_corpus, *COMMON)
    result = pretrain_procs(two, jsonl_corpus, 2, strategy, *COMMON)
    assert result.returncode == 0, result.stderr[-3000:]
    train1, eval1 = metrics(one)
    train2, eval2 = metrics(two)
    assert [r["step"] for r in train2] == list(range(1, 7))  # one metrics.jsonl, rank 0 only
    assert _close([r["loss"] for r in train1], [r["loss"] for r in train2]) < TOL
    assert _close([r["val_loss"] for r in eval1], [r["val_loss"] for r in eval2]) < TOL
    assert [r["tokens"] for r in train1] == [r["tokens"] for r in train2]  # global counts
    root = two / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == [
        "best",
        "latest",
        "step-00000003",
        "step-00000006",
    ]
    checkpoint.verify(root / "step-00000006")
    # The same single-file format with the same keys: evaluate/export read it in one process.
    w1 = load_file(one / "checkpoints" / "step-00000006" / "model.safetensors")
    w2 = load_file(root / "step-00000006" / "model.safetensors")
    assert sorted(w1) == sorted(w2)
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-4


@pytest.mark.slow
def test_fsdp_checkpoint_resumes_in_one_process(tmp_path, jsonl_corpus):
    """Full weights and name-keyed optimizer state: a 2-process FSDP run resumes alone."""
    straight, run = tmp_path / "straight", tmp_path / "run"
    # micro-batches of 4 everywhere (resume refuses another micro_batch_size): 2 x 4 rows per
    # step on two processes, 4 + 4 accumulated on one, the same rows either way
    alone = [*COMMON, "train.max_steps=9", "train.micro_batch_size=4"]
    pretrain(straight, jsonl_corpus, *alone)
    stop_at_6 = f"train.max_tokens={6 * 8 * 32}"
    result = pretrain_procs(run, jsonl_corpus, 2, "fsdp", *COMMON, "train.max_steps=9", stop_at_6)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000006"
    pretrain(run, jsonl_corpus, *alone)  # one process, checkpoint.resume=auto
    a = [r["loss"] for r in metrics(straight)[0]]
    b = [r["loss"] for r in metrics(run)[0]]
    assert [r["step"] for r in metrics(run)[0]] == list(range(1, 10))
    assert _close(a, b) < TOL


@pytest.mark.slow
def test_a_dead_worker_ends_the_job_with_a_clear_error(tmp_path, jsonl_corpus):
    env = {"LLMTUNE_FAULT": "train.step@3:kill", "LLMTUNE_FAULT_RANK": "1"}
    started = time.monotonic()
    result = pretrain_procs(tmp_path / "run", jsonl_corpus, 2, "ddp", *COMMON, env=env)
    assert time.monotonic() - started < 120
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("llmtune: error: worker rank 1") and "SIGKILL" in last, last
