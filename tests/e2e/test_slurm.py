"""Through a real SLURM controller (`bash scripts/slurm.sh start`): a sweep of two jobs, a
2-task DDP job, a requeued job and a job past its time limit, each resuming where it saved."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.e2e.helpers import FAST, TINY_GPT, metrics, pretrain


def _controller_answers() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20
        )
    except subprocess.TimeoutExpired:
        return False
    return out.returncode == 0 and any(s in out.stdout for s in ("idle", "mixed", "allocated"))


SLURM_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "slurm.sh"
SLURM_UP = _controller_answers()
# As root with SLURM installed (`scripts/setup.sh test` installs it), the module starts its
# own one-node cluster; in CI (CI=true, root) these tests never skip: a missing cluster fails.
CAN_START = os.geteuid() == 0 and shutil.which("slurmctld") is not None
REQUIRED = os.environ.get("LLMTUNE_SLURM_REQUIRED") == "1" or (
    os.environ.get("CI") == "true" and os.geteuid() == 0 and shutil.which("apt-get") is not None
)
if REQUIRED and not (SLURM_UP or CAN_START):
    raise RuntimeError("CI as root but SLURM is not installed: run `bash scripts/setup.sh test`")
pytestmark = pytest.mark.skipif(
    not (SLURM_UP or CAN_START),
    reason="no SLURM controller answers and none can start (needs root, `scripts/setup.sh test`)",
)


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """The one-node cluster for this module: the running one, or one started and then stopped."""
    if SLURM_UP:
        yield
        return
    subprocess.run(["bash", str(SLURM_SCRIPT), "start"], check=True, timeout=600)
    try:
        yield
    finally:
        subprocess.run(["bash", str(SLURM_SCRIPT), "stop"], check=False, timeout=120)


# A CPU node: the shipped launcher defaults are for GPU nodes (8 GPUs, 8 CPUs a task, 1 day).
LAUNCHER = [
    "hydra/launcher=slurm",
    "hydra.launcher.gpus_per_node=null",
    "hydra.launcher.tasks_per_node=1",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.timeout_min=5",
]
# No dropout: the 2-task run compares with one process. Checkpoints only when stopped or done.
COMMON = [*FAST, *TINY_GPT, "model.dropout=0", "model.attn_dropout=0", "train.max_steps=6"]
NO_SAVES = ["train.eval_every=1000", "train.save_every=1000"]
# Step 4 waits for the signal: it then lands at a known step, and the resumed run (steps 5-6)
# never reaches a 4th step of its own to wait again.
STALL_AT_4 = {"LLMTUNE_FAULT": "train.step@4:stall"}


def run(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=True, timeout=60).stdout


def submit(sweep_dir: Path, corpus: Path, name: str, *overrides: str, env=None):
    """`llmtune pretrain -m hydra/launcher=slurm ...` in a child process: it waits for its jobs."""
    args = [
        *("pretrain", "-m", f"hydra.sweep.dir={sweep_dir}", f"hydra.launcher.name={name}"),
        *LAUNCHER,
        *("data=files", f"data.train={corpus}"),
        *COMMON,
        *overrides,
    ]
    return subprocess.Popen(
        [sys.executable, "-m", "llmtune", *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen, name: str, timeout: float = 300) -> str:
    """Wait for the launcher; a job requeued by SLURM waits 2 minutes (its BeginTime) before
    it may start again: start it at once. Returns the launcher's stdout."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        for line in run("squeue", "-h", "-r", "-n", name, "-o", "%i %T %r").splitlines():
            job, state, reason = line.split()
            if state == "PENDING" and reason == "BeginTime":
                subprocess.run(["scontrol", "update", f"jobid={job}", "starttime=now"], check=False)
        time.sleep(0.5)
    if proc.poll() is None:
        subprocess.run(["scancel", "-n", name], check=False)
        proc.kill()
        pytest.fail(f"the sweep did not finish in {timeout}s:\n{run('squeue')}")
    out, err = proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    # the launcher returns once the results are written; the jobs' processes are still exiting
    while run("squeue", "-h", "-n", name) and time.monotonic() < deadline + 60:
        time.sleep(0.2)
    print(run("sacct", "-D", "-n", "--name", name, "-o", "JobID%12,State,Elapsed,ExitCode,NTasks"))
    return out


def wait_for_lines(path: Path, n: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if path.is_file() and len(path.read_text().splitlines()) >= n:
            return
        time.sleep(0.2)
    pytest.fail(f"{path} did not reach {n} lines (launcher exit code {proc.poll()})")


def jobs(name: str) -> list[str]:
    """The job's records in accounting, oldest first: one per run, so a requeue adds one."""
    out = run("sacct", "-D", "-n", "-X", "--name", name, "-o", "JobID%20,State%20,ElapsedRaw")
    return [" ".join(line.split()) for line in out.splitlines() if line.strip()]


def restarts(job: str) -> int:
    return int(re.search(r"Restarts=(\d+)", run("scontrol", "show", "job", job)).group(1))


def job_name() -> str:
    return f"llmtune-test-{uuid.uuid4().hex[:8]}"


def uninterrupted(tmp_path: Path, corpus: Path, *overrides: str) -> list[float]:
    """The same run in this process, on one thread like the 1-CPU job."""
    pretrain(tmp_path / "straight", corpus, *COMMON, "hardware.threads=1", *overrides)
    return [r["loss"] for r in metrics(tmp_path / "straight")[0]]


@pytest.mark.slow
def test_a_sweep_submits_one_job_per_point(tmp_path, jsonl_corpus):
    name, sweep = job_name(), tmp_path / "sweep"
    proc = submit(sweep, jsonl_corpus, name, "optim.lr=1e-4,1e-3", "train.max_steps=3")
    seen: dict[str, str] = {}
    listing = ""
    while proc.poll() is None and len(seen) < 2:
        listing = run("squeue", "-r", "-n", name, "-o", "%.10i %.9P %.22j %.8T %.6M %R")
        seen |= {line.split()[0]: line for line in listing.splitlines()[1:]}
        time.sleep(0.2)
    print(listing)
    assert len(seen) == 2, seen  # an array of two jobs, both seen by squeue
    out = finish(proc, name)
    assert "sweep summary (2 runs" in out
    table = (sweep / "summary.md").read_text().splitlines()
    assert "optim.lr=0.0001 | ok | 3 |" in table[2] and "optim.lr=0.001 | ok | 3 |" in table[3]
    for run_dir in (sweep / "0", sweep / "1"):
        assert [r["step"] for r in metrics(run_dir)[0]] == [1, 2, 3]
        assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-00000003"
    states = jobs(name)
    assert len(states) == 2 and all(" COMPLETED " in s for s in states), states
    # 1 CPU a task: 1 thread, though with no task plugin binding CPUs the job sees every core
    log = next((sweep / ".submitit").glob("*_0/*_log.out")).read_text()
    assert "cpu fp32 x1 threads" in log


@pytest.mark.slow
def test_two_tasks_train_as_one_ddp_job(tmp_path, jsonl_corpus):
    name, sweep = job_name(), tmp_path / "sweep"
    ddp = ["hardware=ddp", "hardware.device=cpu", "hardware.timeout=60s"]
    two = ["hydra.launcher.tasks_per_node=2", *ddp, "train.micro_batch_size=4"]
    finish(submit(sweep, jsonl_corpus, name, *two, "train.eval_every=3"), name)
    steps = run("sacct", "-n", "-P", "--name", name, "-o", "JobID,NTasks,State").split()
    assert any(s.endswith(".0|2|COMPLETED") for s in steps), steps  # one srun step, 2 tasks
    one = uninterrupted(tmp_path, jsonl_corpus, "train.eval_every=3")
    two_losses = [r["loss"] for r in metrics(sweep / "0")[0]]
    assert len(two_losses) == 6
    assert max(abs(a - b) / max(1.0, abs(a)) for a, b in zip(one, two_losses)) < 1e-5
    logs = sorted((sweep / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2 and "global_rank=1(2)" in logs[1].read_text()


def _resumed_as_uninterrupted(tmp_path: Path, corpus: Path, sweep: Path, name: str) -> None:
    """One requeue; steps 1-4 in the first run, 5-6 after the resume from step 4."""
    records = jobs(name)
    assert len(records) == 2, records
    assert " REQUEUED " in records[0] and " COMPLETED " in records[1], records
    assert restarts(records[0].split()[0]) == 1
    run_dir = sweep / "0"
    assert (run_dir / "checkpoints" / "step-00000004").is_dir()
    log = next((sweep / ".submitit").glob("*/*_0_log.out")).read_text()
    assert f"resumed from {run_dir}/checkpoints/step-00000004 (step 4)" in log
    resumed = {r["step"]: r["loss"] for r in metrics(run_dir)[0]}
    assert list(resumed) == [1, 2, 3, 4, 5, 6]
    straight = uninterrupted(tmp_path, corpus, *NO_SAVES)
    print(f"requeued run's losses:  {list(resumed.values())}\nuninterrupted run's:    {straight}")
    assert list(resumed.values()) == straight


@pytest.mark.slow
def test_a_requeued_job_resumes_where_it_saved(tmp_path, jsonl_corpus):
    name, sweep = job_name(), tmp_path / "sweep"
    proc = submit(sweep, jsonl_corpus, name, *NO_SAVES, env=STALL_AT_4)
    wait_for_lines(sweep / "0" / "metrics.jsonl", 3, proc)  # waiting inside step 4
    (job,) = run("squeue", "-h", "-n", name, "-o", "%i").split()
    run("scontrol", "requeue", job)  # what preemption with requeue does: SIGTERM, then requeue
    finish(proc, name)
    _resumed_as_uninterrupted(tmp_path, jsonl_corpus, sweep, name)
    err = next((sweep / ".submitit").glob("*/*_0_log.err")).read_text()
    assert "llmtune: error: stopped by SIGTERM at step 4" in err


@pytest.mark.slow
def test_a_job_past_its_time_limit_saves_first_and_resumes(tmp_path, jsonl_corpus):
    """slurmctld checks limits every 30 s and sends USR2 at the first check within
    signal_delay_s + 30 s of the limit: here 60-90 s into the 2-minute limit, each run. The
    first run waits in step 4, saves, submitit requeues it; the second, resumed, is done first."""
    name, sweep = job_name(), tmp_path / "sweep"
    limit = ["hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=30"]
    requeue_once = "hydra.launcher.max_num_timeout=1"
    proc = submit(sweep, jsonl_corpus, name, *NO_SAVES, *limit, requeue_once, env=STALL_AT_4)
    finish(proc, name)
    _resumed_as_uninterrupted(tmp_path, jsonl_corpus, sweep, name)
    first_run_seconds = int(jobs(name)[0].split()[2])
    assert 55 <= first_run_seconds < 120  # signalled near the limit; stopped itself before it
    log = (sweep / "0" / "pretrain.log").read_text()  # the run's log: submitit's records too
    assert "stopped by SIGUSR2 at step 4" in log and "this job is timed-out" in log
    assert "Requeued job" in log


def test_a_refused_submission_is_one_line(tmp_path, capsys):
    from llmtune.cli import main

    with pytest.raises(SystemExit) as exit_info:  # the GPU defaults on a CPU-only node
        main(["pretrain", "-m", f"hydra.sweep.dir={tmp_path}", "hydra/launcher=slurm"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2
    assert err[-1].startswith("llmtune: error: sbatch refused the job: ") and "gres" in err[-1]
    assert "check hydra.launcher.partition, gpus_per_node" in err[-1]
