"""llmtune's console: rich output that never wraps lines off a terminal (pipes, CI, SLURM
logs), and timed stages for the work before training (corpus, tokenizer, tokenization, CPU
peak, weights), each saying what it does, what it found and how long it took."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from rich.console import Console

from llmtune import runlog

# Off a terminal rich would wrap at 80 columns; a log line should stay one line.
OFF_TERMINAL_WIDTH = 10_000


def console() -> Console:
    """A Console printing to the current stdout: the terminal's width there, no wrapping off it."""
    width = None if runlog.terminal().isatty() else OFF_TERMINAL_WIDTH
    return Console(highlight=False, width=width)


def live_console() -> Console:
    """A Console for live displays: draws on the terminal itself, never into the run's log."""
    return Console(file=runlog.terminal(), highlight=False)


def clock(seconds: float) -> str:
    """Elapsed or remaining time as on a clock: 0:07, 4:05, 1:02:03."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def duration(seconds: float) -> str:
    """How long a stage took: 0.4s, 12.3s, then 4:05, 1:02:03."""
    return f"{seconds:.1f}s" if seconds < 60 else clock(seconds)


@dataclass
class Stage:
    """One step before training; `note()` calls inside it say what it found."""

    name: str
    doing: str
    notes: list[str] = field(default_factory=list)


_open: list[Stage] = []


def note(text: str) -> None:
    """Add what the innermost running stage found ("reused from the cache"); else nothing."""
    if _open:
        _open[-1].notes.append(text)


@contextlib.contextmanager
def stage(name: str, doing: str) -> Iterator[Stage]:
    """Run a stage: a spinner with the elapsed time on a terminal (a start line elsewhere),
    then one line with what it found and how long it took."""
    current = Stage(name, doing)
    out = console()
    start = time.perf_counter()
    _open.append(current)
    try:
        if out.is_terminal and not runlog.is_live():  # inside a progress bar: no spinner
            shown = live_console()
            status = shown.status(f"{name}: {doing} ...", spinner="dots")
            with runlog.live(shown), status:
                yield current
        else:
            if not out.is_terminal:
                out.print(f"{name}: {doing} ...", soft_wrap=True)
            yield current
    finally:
        _open.remove(current)
    found = "; ".join(current.notes) or "done"
    took = duration(time.perf_counter() - start)
    out.print(f"[green]{name}[/]: {found} [dim]({took})[/]", soft_wrap=True)
