"""Fault injection for reliability tests, off unless LLMTUNE_FAULT is set.

LLMTUNE_FAULT="<point>[@<n>]:<action>" acts the n-th time (default 1st) the named point is
reached: `kill` sends SIGKILL to this process, `disk_full` raises OSError(ENOSPC),
`error` raises RuntimeError, `stall` waits there until a preemption signal arrives (at most
10 minutes), so that a scheduler's signal lands at a known step. Points are named where
`fault_point` is called;
LLMTUNE_FAULT_RANK limits the fault to one rank of a multi-process job.
"""

from __future__ import annotations

import errno
import os
import signal
import time

from llmtune.train.preemption import requested as preemption_requested

_hits: dict[str, int] = {}


def _parse(spec: str) -> tuple[str, int, str]:
    where, _, action = spec.partition(":")
    point, _, nth = where.partition("@")
    return point, int(nth or 1), action or "kill"


def fault_point(name: str) -> None:
    """Act as LLMTUNE_FAULT says if it names this point; otherwise do nothing."""
    spec = os.environ.get("LLMTUNE_FAULT")
    if not spec:
        return
    point, nth, action = _parse(spec)
    if point != name:
        return
    # LLMTUNE_FAULT_RANK=r: only the worker of that rank acts (multi-process tests).
    only = os.environ.get("LLMTUNE_FAULT_RANK")
    if only is not None and only != os.environ.get("RANK", "0"):
        return
    # Counted per spec: an in-process test that sets another spec starts from zero.
    _hits[spec] = _hits.get(spec, 0) + 1
    if _hits[spec] != nth:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "stall":
        deadline = time.monotonic() + 600
        while not preemption_requested() and time.monotonic() < deadline:
            time.sleep(0.05)
        return
    if action == "disk_full":
        raise OSError(errno.ENOSPC, "No space left on device (injected)")
    raise RuntimeError(f"injected fault at {name}")
