"""Writing to disk: a full disk (ENOSPC, EDQUOT) told apart from other failures, also where a
library hides it, and files given the mode the user's umask gives new files."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import Any

import torch

from llmtune.errors import UserError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(UserError):
    """No space (or quota) left while writing; what was written before is intact."""


def disk_error(exc: BaseException | None) -> OSError | None:
    """The ENOSPC/EDQUOT behind a failed write (or its causes), also when a library kept only
    its message (safetensors: "... (os error 28)")."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            return exc
        found = re.search(r"os error (\d+)", str(exc))
        if found and int(found.group(1)) in DISK_FULL:
            code = int(found.group(1))
            return OSError(code, os.strerror(code))
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def file_mode() -> int:
    """The mode new files get under this process's umask (0644 under the usual 022)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def share_like_new_files(folder: Path) -> None:
    """Give every file under `folder` the umask's mode: safetensors writes 0600 (it renames a
    private temporary file), which hid checkpoints and exports from the user's group."""
    mode = file_mode()
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(mode)


class _RecordingFile:
    """A binary file for torch.save that keeps the OSError of a failed write: torch reports a
    full disk only as 'unexpected pos' in a RuntimeError."""

    def __init__(self, f: Any) -> None:
        self.f, self.error = f, None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.f.flush()


def torch_save(obj: Any, path: Path) -> None:
    """torch.save to `path`; a failed write raises its own OSError (ENOSPC, EDQUOT, ...)."""
    with path.open("wb") as f:
        out = _RecordingFile(f)
        try:
            torch.save(obj, out)
        except RuntimeError:
            if out.error is not None:
                raise out.error from None
            raise
