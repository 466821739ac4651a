"""submitit's errors as one line: a refused sbatch, and a job that left no result, in the
messages the installed submitit really writes."""

from __future__ import annotations

import os
import subprocess

import pytest

from llmtune.config.launch_errors import launch_error

submitit = pytest.importorskip("submitit")
from submitit.core.utils import FailedJobError, UncompletedJobError  # noqa: E402
from submitit.slurm.slurm import SlurmJob  # noqa: E402


def _job_without_result(tmp_path, stderr: str) -> UncompletedJobError:
    """What submitit raises for a job that ended without a result (its own message)."""
    job = SlurmJob(folder=tmp_path / ".submitit" / "%j", job_id="987654", tasks=[0])
    job._results_timeout_s = 0
    job.paths.stderr.parent.mkdir(parents=True)
    job.paths.stderr.write_text(stderr)
    with pytest.raises(UncompletedJobError) as info:
        job._get_outcome_and_result()
    return info.value


def test_a_jobs_llmtune_error_becomes_the_line(tmp_path):
    exc = _job_without_result(
        tmp_path,
        "llmtune: error: data.train: no files match 'x.jsonl'; check the path or glob\n"
        "srun: error: node1: task 0: Exited with exit code 2\n",
    )
    error = launch_error(exc)
    assert error is not None and error.exit_code == 2
    message = str(error)
    assert message.startswith("job 987654 (")
    assert "): data.train: no files match 'x.jsonl'; check the path or glob; its logs" in message
    assert message.endswith(f"its logs are in {tmp_path}/.submitit/987654")
    assert "\n" not in message


def test_a_preempted_job_that_was_not_requeued_says_how_to_resume(tmp_path):
    exc = _job_without_result(
        tmp_path,
        "llmtune: error: stopped by SIGUSR2 at step 4 after saving run/checkpoints/latest "
        "(Job not requeued because: timed-out too many times.); run the same command again to "
        "resume (exit code 75)\n",
    )
    error = launch_error(exc)
    assert error is not None and error.exit_code == 75
    assert str(error).endswith(f"to resume, rerun the sweep with hydra.sweep.dir={tmp_path}")


def test_a_job_killed_without_an_llmtune_error_names_its_logs(tmp_path):
    exc = _job_without_result(tmp_path, "slurmstepd: error: Detected 1 oom_kill event\n")
    error = launch_error(exc)
    assert error is not None and error.exit_code == 1
    assert "ended without an error from llmtune; its logs are in" in str(error)


def test_a_refused_submission_quotes_sbatch():
    cause = subprocess.CalledProcessError(1, ["sbatch", "job.sh"])
    try:
        raise FailedJobError("sbatch: error: invalid partition specified: gpu") from cause
    except FailedJobError as exc:
        error = launch_error(exc)
    assert error is not None and error.exit_code == 2
    assert str(error).startswith("sbatch refused the job: invalid partition specified: gpu; ")


def test_other_errors_are_left_alone():
    assert launch_error(RuntimeError("a bug")) is None
    # a job's own traceback (a bug) keeps its traceback
    assert launch_error(FailedJobError("Job (task=0) failed during processing with trace")) is None


def test_hydras_own_errors_in_a_sweep_stay_compact(tmp_path, capsys):
    from llmtune.cli import main

    with pytest.raises(SystemExit) as info:
        main(["pretrain", "-m", f"hydra.sweep.dir={tmp_path}", "hydra/launcher=nonexistent"])
    err = capsys.readouterr().err
    assert info.value.code == 1 and "Traceback" not in err
    assert "Could not find 'hydra/launcher/nonexistent'" in err
    assert os.environ.get("HYDRA_FULL_ERROR") is None  # set for the sweep only
