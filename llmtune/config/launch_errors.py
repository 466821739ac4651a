"""Sweeps through submitit (hydra/launcher=slurm, submitit_local): a submission that sbatch
refuses, or a job that ends without a result, stops the sweep with one line naming the job,
its error and its logs, where Hydra would print the launcher's traceback."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from llmtune.errors import UserError

PREEMPTED_EXIT = 75  # train/preemption.py's EXIT_CODE: the run saved and can resume


class LaunchError(UserError):
    """sbatch refused the sweep's jobs, or a job ended without a result."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _submission_error(exc: Exception) -> LaunchError:
    lines = [line.removeprefix("sbatch: error: ") for line in str(exc).splitlines() if line.strip()]
    return LaunchError(
        f"sbatch refused the job: {lines[-1] if lines else 'no message'}; check "
        "hydra.launcher.partition, gpus_per_node, tasks_per_node, cpus_per_task, mem_gb and "
        "timeout_min against the cluster (sinfo)"
    )


def _job_error(exc: Exception) -> LaunchError:
    """A job that left no result: its llmtune error line if it printed one, else its state."""
    text = str(exc)
    job = re.search(r"Job (\S+) \(task: \S+\) with path (\S+)", text)
    state = re.search(r"\(state: ([^)]*)\)", text)
    errors = re.findall(r"^llmtune: error: (.*)$", text, flags=re.MULTILINE)
    name = f"job {job.group(1)}" if job else "a job"
    ended = f"({state.group(1)})" if state else "(no result)"
    logs = f"; its logs are in {Path(job.group(2)).parent}" if job else ""
    if not errors:
        return LaunchError(f"{name} {ended} ended without an error from llmtune{logs}", 1)
    preempted = f"(exit code {PREEMPTED_EXIT})" in errors[-1]
    folder = Path(job.group(2)).parent if job else Path()
    # submitit_folder's default, ${hydra.sweep.dir}/.submitit/%j, names the sweep folder
    sweep = folder.parent.parent if folder.parent.name == ".submitit" else "its folder"
    resume = f"; to resume, rerun the sweep with hydra.sweep.dir={sweep}" * preempted
    code = PREEMPTED_EXIT if preempted else 2
    return LaunchError(f"{name} {ended}: {errors[-1]}{logs}{resume}", code)


def launch_error(exc: Exception) -> LaunchError | None:
    """The one-line form of submitit's errors; None for any other exception (a job's own
    traceback, which submitit reports as FailedJobError, stays a traceback: it is a bug)."""
    if not type(exc).__module__.startswith("submitit."):
        return None
    from submitit.core.utils import UncompletedJobError

    if isinstance(exc.__cause__, subprocess.CalledProcessError):  # sbatch's own complaint
        return _submission_error(exc)
    return _job_error(exc) if type(exc) is UncompletedJobError else None


@contextlib.contextmanager
def one_line_launch_errors(multirun: bool) -> Iterator[None]:
    """Around Hydra in a sweep: submitit's errors leave as LaunchError, for the CLI to print.

    Hydra prints every exception from a sweep as a traceback unless HYDRA_FULL_ERROR=1 lets it
    through; its own compact errors (composition, overrides) stay one line, bugs keep theirs.
    """
    if not multirun or os.environ.get("HYDRA_FULL_ERROR") == "1":
        yield
        return
    from hydra.errors import CompactHydraException

    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    except CompactHydraException as exc:  # as Hydra prints it: the message, then its cause
        print(str(exc) + (f"\n{exc.__cause__}" if exc.__cause__ else ""), file=sys.stderr)
        raise SystemExit(1) from None
    except Exception as exc:
        error = launch_error(exc)
        if error is None:
            raise
        raise error from None
    finally:
        os.environ.pop("HYDRA_FULL_ERROR", None)
