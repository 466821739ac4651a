"""The run folder: checked before Hydra writes into it (a file in the way, a read-only disk),
and held with an exclusive OS lock for the run's life, so two runs never share one folder."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from llmtune.errors import UserError

LOCK_FILE = ".llmtune.lock"
# Set by the launcher for the workers it starts under its own lock of this folder.
HELD_BY_LAUNCHER = "LLMTUNE_RUN_LOCK"


class RunFolderError(UserError):
    """The run folder cannot be used: in the way of a file, not writable, or in use."""


def _unwritable(folder: Path) -> str | None:
    """Why nothing can be written in `folder` (an existing directory), or None."""
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return os.strerror(errno.EROFS).lower()
    except OSError as exc:
        return (exc.strerror or str(exc)).lower()
    if not os.access(folder, os.W_OK | os.X_OK):
        return os.strerror(errno.EACCES).lower()
    return None


def check_writable(path: Path, key: str = "hydra.run.dir") -> None:
    """Refuse, in one line, a run folder that cannot be created or written: a file on its
    path, or a read-only or foreign folder where it would be (before Hydra tries)."""
    path = Path(os.path.abspath(path.expanduser()))
    for part in (path, *path.parents):
        if part.is_dir():
            problem = _unwritable(part)
            if problem:
                raise RunFolderError(
                    f"{key}={path}: cannot write in {part} ({problem}); choose a writable folder"
                )
            return
        if os.path.lexists(part):
            raise RunFolderError(
                f"{key}={path}: {part} is a file, not a folder; choose another {key}"
            )


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on `run_dir` (flock on its lock file) until the block ends.

    The lock dies with the process, so a run killed with -9 leaves none behind; a second
    run on the same folder stops at once, naming the holder's pid.
    """
    if os.environ.get(HELD_BY_LAUNCHER) == str(run_dir.resolve()):
        yield  # a worker of a launcher that holds this folder's lock
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise RunFolderError(
            f"{run_dir}: cannot write in the run folder ({exc.strerror}); choose a writable "
            "hydra.run.dir"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise RunFolderError(
                f"{run_dir} is in use by another llmtune run (pid {holder}); wait for it to "
                "end or choose another hydra.run.dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the only descriptor releases the lock


@contextlib.contextmanager
def held_for_workers(run_dir: Path) -> Iterator[None]:
    """The launcher's lock on `run_dir`, marked in the environment its workers inherit."""
    with locked(run_dir):
        saved = os.environ.get(HELD_BY_LAUNCHER)
        os.environ[HELD_BY_LAUNCHER] = str(run_dir.resolve())
        try:
            yield
        finally:
            if saved is None:
                os.environ.pop(HELD_BY_LAUNCHER, None)
            else:
                os.environ[HELD_BY_LAUNCHER] = saved


def check_run_dirs(overrides: list[str]) -> None:
    """check_writable on the hydra.run.dir and hydra.sweep.dir a command line writes out."""
    for text in overrides:
        key, _, value = text.lstrip("+~").partition("=")
        if key in ("hydra.run.dir", "hydra.sweep.dir") and value and "${" not in value:
            check_writable(Path(value.strip("'\"")), key)
