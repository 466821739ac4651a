"""LLMTUNE_FAULT=<point>:stall holds a run at a known step until a signal arrives."""

from __future__ import annotations

import os
import signal
import threading
import time

from llmtune.faults import fault_point
from llmtune.train import preemption


def test_stall_waits_for_a_signal(monkeypatch):
    monkeypatch.setenv("LLMTUNE_FAULT", "train.step@2:stall")
    restore = preemption.install()
    try:
        fault_point("train.step")  # the 1st time: not this one
        timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGUSR1))
        started = time.monotonic()
        timer.start()
        fault_point("train.step")
        waited = time.monotonic() - started
    finally:
        restore()
    assert 0.4 < waited < 5 and preemption.requested()
