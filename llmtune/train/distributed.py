"""Multi-process training: the process group from torchrun/SLURM/submitit variables, DDP or
FSDP2 applied to a built model from the outside, cross-rank reductions, and full state dicts
so that checkpoints keep the single-process format whatever the world size."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from llmtune.config.schema import RunConfig
from llmtune.config.validate import parse_duration, validate


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: global rank, rank on its node, and the sizes of both."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _slurm_local_size(env: Mapping[str, str], ntasks: int) -> int:
    per_node = re.match(r"\d+", env.get("SLURM_NTASKS_PER_NODE", ""))
    nodes = int(env.get("SLURM_NNODES", "1") or 1)
    return int(per_node.group()) if per_node else max(1, ntasks // nodes)


def _in_srun_step(env: Mapping[str, str]) -> bool:
    """A task of `srun` (one per GPU), not a batch script that merely sees SLURM_NTASKS."""
    step = env.get("SLURM_STEP_ID", env.get("SLURM_STEPID", ""))
    batch_step = ("", "batch", "extern", "4294967294", "4294967295")
    return step not in batch_step or env.get("SUBMITIT_EXECUTOR") == "slurm"


def env_info(env: Mapping[str, str] = os.environ) -> DistInfo:
    """Rank and world size from torchrun (RANK...), SLURM (SLURM_PROCID...) or submitit-local."""
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun, llmtune's own launcher, srun torchrun
        return DistInfo(
            int(env["RANK"]),
            int(env.get("LOCAL_RANK", 0)),
            int(env["WORLD_SIZE"]),
            int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])),
        )
    if "SUBMITIT_LOCAL_NTASKS" in env:  # submitit's local executor mimics one SLURM node
        n = int(env["SUBMITIT_LOCAL_NTASKS"])
        rank = int(env.get("SUBMITIT_LOCAL_GLOBALID", 0))
        return DistInfo(rank, int(env.get("SUBMITIT_LOCAL_LOCALID", rank)), n, n)
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and _in_srun_step(env):
        n = int(env["SLURM_NTASKS"])
        local = int(env.get("SLURM_LOCALID", 0))
        return DistInfo(int(env["SLURM_PROCID"]), local, n, _slurm_local_size(env, n))
    return DistInfo()


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: 'gpu[03-05,9],cpu1' -> 'gpu03'."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        return "localhost"
    prefix, ranges = match.groups()
    return prefix + ranges.split(",")[0].split("-")[0] if ranges else prefix


def _rendezvous_env(env: dict[str, str]) -> None:
    """MASTER_ADDR/PORT for SLURM and submitit jobs (torchrun sets them itself)."""
    if "SLURM_NODELIST" in env and "SUBMITIT_LOCAL_NTASKS" not in env:
        env.setdefault("MASTER_ADDR", first_host(env["SLURM_NODELIST"]))
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    # One port per job id, so two jobs sharing a node do not collide.
    job = env.get("SLURM_JOB_ID") or env.get("SUBMITIT_LOCAL_JOB_ID") or "0"
    digits = int(re.sub(r"\D", "", job) or 0)
    env.setdefault("MASTER_PORT", str(20000 + digits % 20000))


def _task_cpus(env: Mapping[str, str]) -> int:
    """The CPUs SLURM gave each task of this srun step (--cpus-per-task); 0 elsewhere.

    Where no task plugin binds tasks to their CPUs, every task sees all the node's cores: jobs
    sharing a node would each start a thread per core and slow each other down many times.
    """
    if "RANK" in env or "SUBMITIT_LOCAL_NTASKS" in env or not _in_srun_step(env):
        return 0
    return int(env.get("SLURM_CPUS_PER_TASK", "0") or 0)


def with_world(config: RunConfig, info: DistInfo) -> RunConfig:
    """The config as this worker runs it: its world size, and its share of the CPU cores."""
    hw = config.hardware
    cores = len(os.sched_getaffinity(0))
    threads = hw.threads or min(_task_cpus(os.environ), cores)
    if not threads and info.local_world_size > 1:  # N workers on one node share its cores
        threads = max(1, cores // info.local_world_size)
    hw = dataclasses.replace(hw, world_size=info.world_size, threads=threads, nproc=1)
    config = dataclasses.replace(config, hardware=hw)
    validate(config)  # global batch divisibility depends on the world size
    return config


def init(config: RunConfig, info: DistInfo) -> None:
    """Join the process group (gloo on CPU, nccl on GPU) with a bounded collective timeout."""
    if info.world_size == 1 or dist.is_initialized():
        return
    _rendezvous_env(os.environ)  # type: ignore[arg-type]
    cuda = torch.cuda.is_available() and config.hardware.device != "cpu"
    if cuda:
        torch.cuda.set_device(info.local_rank)
    timeout = datetime.timedelta(seconds=parse_duration(config.hardware.timeout))
    dist.init_process_group(
        "nccl" if cuda else "gloo", rank=info.rank, world_size=info.world_size, timeout=timeout
    )


def shutdown(completed: bool) -> None:
    """Leave the process group. After a completed run, only once every rank is done: a gloo
    worker whose peer closes its connections first can abort in its own teardown. After a
    failure, at once (a barrier would wait for the dead rank until the timeout)."""
    if not dist.is_initialized():
        return
    if completed:
        dist.barrier()
    dist.destroy_process_group()


def current() -> DistInfo:
    """This process's place in the initialised process group (rank 0 of 1 without one)."""
    if not dist.is_initialized():
        return DistInfo()
    local = env_info()
    return DistInfo(dist.get_rank(), local.local_rank, dist.get_world_size(), local.world_size)


def share_run_dir(run_dir: Path) -> Path:
    """Rank 0's run directory on every rank (`${now:}` resolves per process under torchrun).

    A worker whose own Hydra directory differs drops it if it holds only Hydra's files.
    """
    if not dist.is_initialized():
        return run_dir
    shared = [str(run_dir)]
    dist.broadcast_object_list(shared, src=0)
    chosen = Path(shared[0])
    hydra_only = {".hydra", "pretrain.log", "finetune.log"}
    if chosen != run_dir and run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= hydra_only:
        shutil.rmtree(run_dir, ignore_errors=True)
    return chosen


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def comm_device() -> torch.device:
    return torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")


def all_sum(values: list[float] | Tensor) -> Tensor:
    """Element-wise sum over ranks (float64 so token counts stay exact); identity alone."""
    tensor = torch.as_tensor(values, dtype=torch.float64)
    if not dist.is_initialized():
        return tensor
    on_device = tensor.to(comm_device())
    dist.all_reduce(on_device)
    return on_device.cpu()


def gather(value: Any) -> list[Any]:
    """Every rank's `value` (picklable), in rank order; [value] alone."""
    if not dist.is_initialized():
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def global_counts(tokens: int, flops: float) -> tuple[int, float]:
    """A step's tokens and FLOPs over all ranks: max_tokens then stops every rank together."""
    summed = all_sum([tokens, flops]).tolist()
    return int(summed[0]), summed[1]


def main_only(fn: Any, *args: Any) -> list:
    """fn(*args) on rank 0 while the others wait (file-system changes); [] on other ranks."""
    result = fn(*args) if current().is_main else []
    barrier()
    return result


def any_rank(*flags: bool) -> tuple[bool, ...]:
    """Each flag OR-ed over ranks, so every rank takes the same stop/save decision."""
    # compared as Python floats: a comparison per tensor element was 90% of the loop's
    # per-step stop check (~35 us)
    summed = all_sum([float(f) for f in flags]).tolist()
    return tuple(v > 0 for v in summed)


def sum_counts(counts: dict[str, Tensor | int]) -> dict[str, Tensor | int]:
    """Target counts per loss term summed over ranks: the loss is normalised globally."""
    if not dist.is_initialized() or not counts:
        return counts
    names = sorted(counts)  # every rank builds the same terms, so the same order
    summed = all_sum([float(counts[n]) for n in names])
    return {n: torch.tensor(int(v)) for n, v in zip(names, summed.tolist(), strict=True)}


class QuietReporter:
    """The Reporter of ranks > 0: only rank 0 prints and writes metrics.jsonl."""

    def message(self, text: str) -> None:
        pass

    def log(self, record: dict[str, Any]) -> None:
        pass

    def timed(self, kind: str) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def close(self, summary: dict[str, Any]) -> None:
        pass


def reporter(run_dir: Path, train: Any, start_step: int) -> Any:
    """Rank 0's Reporter (console, metrics.jsonl) for the train config; a silent one elsewhere."""
    from llmtune.train.report import Reporter

    return Reporter(run_dir, train, start_step) if current().is_main else QuietReporter()
