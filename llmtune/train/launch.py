"""Run a command as one worker of a job, or start `hardware.nproc` local workers with torch's
elastic launcher (what torchrun runs), all on one resolved config and one run directory."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from llmtune.config.load import to_yaml
from llmtune.config.schema import RunConfig
from llmtune.data import cache_root
from llmtune.disk import DiskFull, disk_error
from llmtune.errors import UserError
from llmtune.train import distributed, preemption, run_folder

Run = Callable[[RunConfig, Path], Any]
WORKER_COMMAND = "_worker"  # `python -m llmtune _worker <command> <config.yaml> <run dir>`
# Commands whose run folder holds checkpoints: one run at a time may use it (run_folder.locked)
LOCKED_COMMANDS = ("pretrain", "finetune")


class WorkerFailed(UserError):
    """A worker died or failed; the launcher stopped the others."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def run_command(run: Run, command: str, config: RunConfig, run_dir: Path) -> None:
    """Start local workers when hardware.nproc > 1 asks for them, else be one worker."""
    info = distributed.env_info()
    if config.hardware.nproc > 1 and info.world_size == 1:
        n = config.hardware.nproc
        # what every worker would refuse (batch sizes per world size), said once, before any starts
        distributed.with_world(config, distributed.DistInfo(world_size=n, local_world_size=n))
        held = run_folder.held_for_workers(run_dir) if command in LOCKED_COMMANDS else None
        with held or contextlib.nullcontext(), disk_full_said_once(config, run_dir):
            spawn(command, config, run_dir)
    else:
        run_worker(run, command, config, run_dir, info)


def run_worker(
    run: Run, command: str, config: RunConfig, run_dir: Path, info: distributed.DistInfo
) -> None:
    """Join the job's process group (if any), run the command, leave the group."""
    config = distributed.with_world(config, info)
    distributed.init(config, info)
    completed = False
    try:
        run_dir = distributed.share_run_dir(run_dir)
        # Only rank 0 talks: the others' prints would repeat it N times.
        quiet = open(os.devnull, "w") if not info.is_main else None  # noqa: SIM115
        with (
            _locked_by_rank_0(command, run_dir, info),
            disk_full_said_once(config, run_dir),
            contextlib.redirect_stdout(quiet) if quiet else contextlib.nullcontext(),
        ):
            run(config, run_dir)
        completed = True
    finally:
        distributed.shutdown(completed)


@contextlib.contextmanager
def _locked_by_rank_0(command: str, run_dir: Path, info: distributed.DistInfo) -> Iterator[None]:
    """Rank 0 holds the run folder's lock; every rank stops if it could not take it."""
    with contextlib.ExitStack() as stack:
        error = None
        if info.is_main and command in LOCKED_COMMANDS:
            try:
                stack.enter_context(run_folder.locked(run_dir))
            except UserError as exc:
                error = exc
        (failed,) = distributed.any_rank(error is not None)
        if failed:
            raise error or run_folder.RunFolderError(f"{run_dir}: rank 0 could not lock it")
        yield


@contextlib.contextmanager
def disk_full_said_once(config: RunConfig, run_dir: Path) -> Iterator[None]:
    """A full disk (ENOSPC, EDQUOT) anywhere in the run, also inside a library's own error,
    ends in one line; what was saved before is intact (saves are atomic)."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        cause = disk_error(exc)
        if cause is None:
            raise
        where = cause.filename or f"the run folder {run_dir} or the cache {cache_root(config.data)}"
        raise DiskFull(
            f"{cause.strerror or os.strerror(cause.errno)} ({errno.errorcode[cause.errno]}) while "
            f"writing {where}; checkpoints saved before are intact: free disk space and run "
            "the same command again"
        ) from None


def spawn(command: str, config: RunConfig, run_dir: Path) -> None:
    """hardware.nproc workers on this machine; a dead worker ends them all with a clear error."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    n = config.hardware.nproc
    launch = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=n,
        run_id=f"llmtune-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # a free port, like torchrun --standalone
        max_restarts=0,  # a failed worker fails the job; resume is the restart mechanism
        monitor_interval=0.2,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"starting {n} workers ({config.hardware.strategy}); run directory {run_dir}")
    with tempfile.TemporaryDirectory(prefix="llmtune-launch-") as tmp:
        # Workers read this resolved config: `${now:}` and friends resolve once, here.
        resolved = Path(tmp) / "config.yaml"
        resolved.write_text(to_yaml(config))
        args = ("-m", "llmtune", WORKER_COMMAND, command, str(resolved), str(run_dir))
        try:
            elastic_launch(launch, sys.executable)(*args)
        except ChildFailedError as exc:
            raise _worker_error(exc) from None
        except SignalException as exc:
            raise preemption.Preempted(
                f"stopped by {exc.sigval.name}; the workers saved a checkpoint if they reached "
                f"a step boundary; run the same command again to resume"
            ) from None


def _worker_error(exc: Any) -> UserError:
    """One line naming the failed worker(s): preempted, a user error, or a crash."""
    failures = exc.failures  # local rank -> ProcessFailure
    codes = {f.exitcode for f in failures.values()}
    if codes == {preemption.EXIT_CODE}:
        return preemption.Preempted(
            f"workers stopped on a signal after saving a checkpoint; run the same command "
            f"again to resume (exit code {preemption.EXIT_CODE})"
        )
    # The cause is a failure other than the launcher's own SIGTERM to the survivors.
    causes = {r: f for r, f in failures.items() if f.exitcode != -signal.SIGTERM} or failures
    rank = min(causes, key=lambda r: (causes[r].timestamp, r))
    failure = causes[rank]
    how = (
        f"was killed by {failure.signal_name()}"
        if failure.exitcode < 0
        else f"exited with code {failure.exitcode}"
    )
    code = failure.exitcode if failure.exitcode > 0 else 1
    return WorkerFailed(
        f"worker rank {rank} (pid {failure.pid}) {how}; the launcher stopped the other "
        f"{len(failures) - 1 or 'no'} worker(s); its own error, if any, is printed above",
        code,
    )


def worker_main(run: Run, command: str, config_path: str, run_dir: str) -> None:
    """Entry of a worker started by `spawn`: the resolved config, no Hydra composition."""
    from llmtune.config.load import load_yaml

    config = load_yaml(Path(config_path))
    if config.command != command:
        raise UserError(f"{config_path} is a {config.command} config, not {command}")
    run_worker(run, command, config, Path(run_dir), distributed.env_info())
