"""A scheduler's signal handler (submitit's SIGUSR2) runs after llmtune has saved; when it
declines to requeue, the run still ends with the preemption exit code and says why."""

from __future__ import annotations

import os
import signal

import pytest

from llmtune.train import preemption


@pytest.fixture
def scheduler_handler():
    """A SIGUSR2 handler installed before llmtune's, as submitit installs its own."""
    calls: list[int] = []
    behaviour = {"raise": None}

    def handler(signum, frame):
        calls.append(signum)
        if behaviour["raise"] is not None:
            raise behaviour["raise"]

    before = signal.signal(signal.SIGUSR2, handler)
    restore = preemption.install()
    yield calls, behaviour
    restore()
    signal.signal(signal.SIGUSR2, before)


def test_the_scheduler_handler_runs_after_the_save(scheduler_handler, capsys):
    calls, behaviour = scheduler_handler
    behaviour["raise"] = SystemExit(-1)  # submitit: requeue, then exit
    os.kill(os.getpid(), signal.SIGUSR2)
    assert preemption.requested() and calls == []  # only a flag until the step boundary
    with pytest.raises(SystemExit):
        preemption.stop(4, "run/checkpoints/latest")
    assert calls == [signal.SIGUSR2]
    assert (
        "stopped by SIGUSR2 at step 4 after saving run/checkpoints/latest"
        in capsys.readouterr().out
    )


def test_a_handler_that_declines_to_requeue_still_ends_as_preempted(scheduler_handler):
    calls, behaviour = scheduler_handler
    behaviour["raise"] = RuntimeError("Job not requeued because: timed-out too many times.")
    os.kill(os.getpid(), signal.SIGUSR2)
    with pytest.raises(preemption.Preempted) as info:
        preemption.stop(4, "latest")
    assert info.value.exit_code == preemption.EXIT_CODE
    assert "(Job not requeued because: timed-out too many times.)" in str(info.value)
    assert "run the same command again to resume" in str(info.value)
