"""Ranks and rendezvous from torchrun, SLURM and submitit variables; data positions across
world sizes; a clear error from a failed worker."""

from __future__ import annotations

from types import SimpleNamespace

from llmtune.train import preemption
from llmtune.train.distributed import (
    DistInfo,
    _rendezvous_env,
    _task_cpus,
    env_info,
    first_host,
)
from llmtune.train.launch import _worker_error
from llmtune.train.parallel import rescale_data_position


def test_ranks_come_from_torchrun_slurm_or_submitit():
    assert env_info({}) == DistInfo()
    torchrun = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert env_info(torchrun) == DistInfo(1, 1, 2, 2)
    srun = {
        "SLURM_PROCID": "5",
        "SLURM_NTASKS": "8",
        "SLURM_LOCALID": "1",
        "SLURM_STEP_ID": "0",
        "SLURM_NTASKS_PER_NODE": "4(x2)",
    }
    assert env_info(srun) == DistInfo(5, 1, 8, 4)
    # a batch script sees SLURM_NTASKS too, but is not one of the tasks
    assert env_info({"SLURM_PROCID": "0", "SLURM_NTASKS": "8"}) == DistInfo()
    local = {"SUBMITIT_LOCAL_NTASKS": "2", "SUBMITIT_LOCAL_GLOBALID": "1"}
    assert env_info(local) == DistInfo(1, 1, 2, 2)


def test_threads_follow_the_cpus_slurm_gave_each_task():
    task = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_STEP_ID": "0"}
    assert _task_cpus({**task, "SLURM_CPUS_PER_TASK": "3"}) == 3
    assert _task_cpus(task) == 0  # no --cpus-per-task: the node's cores, as before
    # the batch script, and workers that torchrun starts inside a task, divide them themselves
    assert _task_cpus({"SLURM_CPUS_PER_TASK": "3", "SLURM_STEP_ID": "batch"}) == 0
    assert _task_cpus({**task, "SLURM_CPUS_PER_TASK": "3", "RANK": "0"}) == 0


def test_rendezvous_host_is_the_first_node_and_the_port_follows_the_job():
    assert first_host("gpu[03-05,9],cpu1") == "gpu03"
    assert first_host("node7") == "node7"
    env = {"SLURM_NODELIST": "gpu[12-13]", "SLURM_JOB_ID": "4242"}
    _rendezvous_env(env)
    assert env["MASTER_ADDR"] == "gpu12" and env["MASTER_PORT"] == str(20000 + 4242)


def test_data_position_keeps_the_samples_seen_when_the_world_size_changes():
    saved = {"epoch": 1, "position": 6, "world_size": 2}
    assert rescale_data_position(saved, 1) == {"epoch": 1, "position": 12, "world_size": 2}
    assert rescale_data_position(saved, 2) == saved
    assert rescale_data_position({"epoch": 0, "position": 3}, 4)["position"] == 3  # old format


def _failure(exitcode: int, pid: int, name: str = "") -> SimpleNamespace:
    return SimpleNamespace(exitcode=exitcode, pid=pid, timestamp=0, signal_name=lambda: name)


def test_worker_errors_name_the_cause():
    killed = SimpleNamespace(
        failures={0: _failure(-15, 10, "SIGTERM"), 1: _failure(-9, 11, "SIGKILL")}
    )
    error = _worker_error(killed)
    assert (
        str(error).startswith("worker rank 1 (pid 11) was killed by SIGKILL")
        and error.exit_code == 1
    )
    preempted = SimpleNamespace(failures={0: _failure(75, 10), 1: _failure(75, 11)})
    assert isinstance(_worker_error(preempted), preemption.Preempted)
    assert _worker_error(preempted).exit_code == preemption.EXIT_CODE
