"""The run's log file and the console's quiet: while a command runs, everything it prints is
also appended without colour codes to `<run dir>/<command>.log`; third-party log records and
Python warnings go to that file and reach the console only with `verbose=true`."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

# CSI sequences (colours, cursor moves), OSC sequences (hyperlinks), and carriage returns
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\r")


class Tee:
    """A text stream that writes to `stream` (the console) and, stripped of codes, to `log`."""

    def __init__(self, stream: IO[str], log: IO[str]) -> None:
        self.stream = stream
        self.log = log

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.log.write(_ANSI.sub("", text))
        self.log.flush()  # a killed run keeps what it printed
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
        self.log.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self.stream, "encoding", None) or "utf-8"

    def __getattr__(self, name: str) -> Any:
        # rich unwraps `rich_proxied_file` and would write past the log: not delegated
        if name == "rich_proxied_file":
            raise AttributeError(name)
        return getattr(self.stream, name)


def terminal(stream: IO[str] | None = None) -> IO[str]:
    """The console stream under any Tee: live displays draw there, not into the log."""
    stream = sys.stdout if stream is None else stream
    while isinstance(stream, Tee):
        stream = stream.stream
    return stream


def log_only(text: str) -> None:
    """Append a line to the run's log without showing it (what a live display shows instead)."""
    if isinstance(sys.stdout, Tee):
        sys.stdout.log.write(text.rstrip("\n") + "\n")
        sys.stdout.log.flush()


_live_displays = [0]  # how many live displays are drawing now (rich allows one at a time)


def is_live() -> bool:
    return _live_displays[0] > 0


@contextlib.contextmanager
def live(console: Any) -> Iterator[None]:
    """While a rich live display (progress bar, spinner) draws on `console`, print() output
    goes above it and, through the Tee, still into the log."""
    from rich.file_proxy import FileProxy

    _live_displays[0] += 1
    saved = sys.stdout, sys.stderr
    teed = [s for s in saved if isinstance(s, Tee)]
    originals = [s.stream for s in teed]
    try:
        for tee in teed:
            tee.stream = FileProxy(console, tee.stream)
        if not teed:
            sys.stdout, sys.stderr = FileProxy(console, saved[0]), FileProxy(console, saved[1])
        yield
    finally:
        _live_displays[0] -= 1
        for tee, stream in zip(teed, originals, strict=True):
            tee.stream.flush()
            tee.stream = stream
        if not teed:
            sys.stdout.flush()
            sys.stdout, sys.stderr = saved


class _ConsoleFilter(logging.Filter):
    """Off the console unless verbose: third-party records below ERROR (the log keeps them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith("llmtune") or record.levelno >= logging.ERROR


def _console_handlers() -> list[logging.Handler]:
    """Handlers that print to a terminal stream: the root's (Hydra's job logging) and those of
    libraries that keep their own (torch's glog-style lines)."""
    known = logging.Logger.manager.loggerDict.values()
    loggers = [logging.getLogger(), *(v for v in known if isinstance(v, logging.Logger))]
    return [
        h
        for logger in loggers
        for h in logger.handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]


@contextlib.contextmanager
def quiet_libraries(verbose: bool) -> Iterator[None]:
    """Keep third-party INFO lines, warnings and transformers' messages off the console."""
    if verbose:
        yield
        return
    handlers, console_filter = _console_handlers(), _ConsoleFilter()
    env_before = os.environ.get("TRANSFORMERS_VERBOSITY")
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"  # read when transformers is first imported
    for handler in handlers:
        handler.addFilter(console_filter)
    logging.captureWarnings(True)  # warnings become "py.warnings" records: file, not console
    try:
        with warnings.catch_warnings():
            if not logging.getLogger().handlers:  # no log file to keep them in (plan)
                warnings.simplefilter("ignore")
            yield
    finally:
        logging.captureWarnings(False)
        for handler in handlers:
            handler.removeFilter(console_filter)
        if env_before is None:
            os.environ.pop("TRANSFORMERS_VERBOSITY", None)
        else:
            os.environ["TRANSFORMERS_VERBOSITY"] = env_before


def hydra_log_file() -> Path | None:
    """The job log Hydra's job logging opened (`<run dir>/<job name>.log`), if any."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            return Path(handler.baseFilename)
    return None


@contextlib.contextmanager
def capture(path: Path | None, verbose: bool) -> Iterator[None]:
    """Tee stdout and stderr into `path` (appending) while the block runs; an exception that
    is not a clean exit is written there too, with its traceback."""
    with quiet_libraries(verbose):
        if path is None:
            yield
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as log:
            saved = sys.stdout, sys.stderr
            sys.stdout, sys.stderr = Tee(saved[0], log), Tee(saved[1], log)
            try:
                yield
            except KeyboardInterrupt:
                log.write("interrupted (KeyboardInterrupt)\n")
                raise
            except SystemExit:
                raise  # its message, if any, was printed through the Tee
            except BaseException:
                log.write(traceback.format_exc())
                raise
            finally:
                sys.stdout, sys.stderr = saved
