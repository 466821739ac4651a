"""Preemption: SIGTERM and SIGUSR1 only set a flag; the loop stops at the next step boundary,
saves, and the process exits with EXIT_CODE so that a requeued job resumes from `latest`."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

from llmtune.errors import UserError

# EX_TEMPFAIL from sysexits.h: "temporary failure, try again" - the run is intact and resumes.
EXIT_CODE = 75
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

_received: list[int] = []
_previous: dict[int, Any] = {}


class Preempted(UserError):
    """Stopped on a signal after saving a checkpoint; rerunning the command resumes."""

    exit_code = EXIT_CODE


def _handler(signum: int, frame: Any) -> None:
    # Only a flag: a signal can land mid-backward or mid-collective; the loop picks its moment.
    _received.append(signum)


def install() -> Callable[[], None]:
    """Watch SIGTERM/SIGUSR1 (and SIGUSR2 where a scheduler, e.g. submitit, handles it).

    Returns a function restoring the previous handlers. Outside the main thread (where Python
    cannot install handlers) nothing is watched.
    """
    _received.clear()
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    watched = list(SIGNALS)
    if callable(signal.getsignal(signal.SIGUSR2)):  # submitit's requeue handler: chain it
        watched.append(signal.SIGUSR2)
    for sig in watched:
        _previous[sig] = signal.signal(sig, _handler)

    def restore() -> None:
        for sig in watched:
            signal.signal(sig, _previous.get(sig, signal.SIG_DFL))

    return restore


def requested() -> bool:
    """True once a watched signal has arrived in this process."""
    return bool(_received)


def stop(step: int, checkpoint_dir: str) -> None:
    """After the checkpoint is saved: hand the signal to a scheduler's own handler, then exit.

    submitit's SIGUSR2 handler requeues the job and exits; otherwise, or when it declines to
    requeue (too many timeouts), `Preempted` ends the run with EXIT_CODE.
    """
    names = sorted({signal.Signals(s).name for s in _received}) or ["a signal on another rank"]
    saved = f"stopped by {', '.join(names)} at step {step} after saving {checkpoint_dir}"
    declined = ""
    for sig in dict.fromkeys(_received):
        previous = _previous.get(sig)
        if not callable(previous):
            continue
        # the job's log says what was saved before a scheduler's handler exits the process
        print(f"llmtune: {saved}; passing {signal.Signals(sig).name} on to the previous handler")
        try:
            previous(sig, None)
        except Exception as exc:  # it will not requeue the job: say why, then exit as usual
            declined = f" ({exc})"
    raise Preempted(
        f"{saved}{declined}; run the same command again to resume (exit code {EXIT_CODE})"
    )
