"""The one on-disk checkpoint format: written atomically, and read as a closed box.

<run dir>/checkpoints/{latest,best,step-XXXXXXXX/{model.safetensors, config.yaml,
tokenizer.json, train_state.pt, meta.json}}; meta.json holds checksums of the other files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from llmtune import __version__
from llmtune.config.build import build_run_config
from llmtune.config.schema import RunConfig
from llmtune.disk import DISK_FULL, DiskFull, disk_error, share_like_new_files, torch_save
from llmtune.errors import CheckpointError, UserError
from llmtune.faults import fault_point

FORMAT_VERSION = 1
WEIGHTS, CONFIG, TOKENIZER, TRAIN_STATE, META = (
    "model.safetensors",
    "config.yaml",
    "tokenizer.json",
    "train_state.pt",
    "meta.json",
)
REQUIRED = (WEIGHTS, CONFIG, TOKENIZER, META)
CHECKSUMMED = (WEIGHTS, CONFIG, TOKENIZER, TRAIN_STATE)  # the names meta.json "files" may hold
STEP = re.compile(r"step-\d{8}")  # the only names a pointer or a step folder may have
_MAX_TEXT = 64 << 20  # meta.json, config.yaml, tokenizer.json: far below this when genuine


def step_name(step: int) -> str:
    return f"step-{step:08d}"


@dataclass
class CheckpointContents:
    """What `save` writes besides the weights."""

    config_yaml: str
    tokenizer_json: str
    train_state: dict[str, Any] | None
    meta: dict[str, Any]  # step, metrics, heads, ...; checksums and versions are added


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (weights files can be large)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_pointer(root: Path, name: str, target: str) -> None:
    """Atomically point `root/name` (latest or best) at a step folder."""
    tmp = root / f".{name}.tmp"
    tmp.write_text(target + "\n")
    _fsync(tmp)
    os.replace(tmp, root / name)
    _fsync(root)


def _write_step(tmp: Path, step: int, weights: dict[str, torch.Tensor], contents) -> None:
    """Fill a temporary step folder with every file and meta.json's checksums."""
    save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, tmp / WEIGHTS)
    fault_point("checkpoint.after_weights")
    (tmp / CONFIG).write_text(contents.config_yaml)
    (tmp / TOKENIZER).write_text(contents.tokenizer_json)
    if contents.train_state is not None:
        torch_save(contents.train_state, tmp / TRAIN_STATE)
    files = [p for p in sorted(tmp.iterdir()) if p.name != META]
    meta = {
        **contents.meta,
        "format_version": FORMAT_VERSION,
        "llmtune_version": __version__,
        "step": step,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": {p.name: sha256_file(p) for p in files},
    }
    (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
    share_like_new_files(tmp)
    for path in tmp.iterdir():
        _fsync(path)
    fault_point("checkpoint.before_rename")


def save(
    root: Path, step: int, weights: dict[str, torch.Tensor], contents: CheckpointContents
) -> Path:
    """Write step folder `root/step-XXXXXXXX` atomically and make it `latest`.

    Everything is written into a temporary folder first; a failure leaves the previous
    checkpoints and pointers untouched and removes the partial folder.
    """
    final = root / step_name(step)
    tmp = root / f".tmp-{step_name(step)}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        _write_step(tmp, step, weights, contents)
        if final.is_dir() and not final.is_symlink():  # re-saving a step (a final save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync(root)
        fault_point("checkpoint.before_latest")
        _write_pointer(root, "latest", final.name)
    except (OSError, SafetensorError, RuntimeError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        cause = disk_error(exc) or (exc if isinstance(exc, OSError) else None)
        if cause is None:
            raise
        kind = DiskFull if cause.errno in DISK_FULL else CheckpointError
        raise kind(
            f"could not write checkpoint {final} ({cause.strerror or cause}); earlier checkpoints "
            "are intact and nothing was pruned; free disk space and resume"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def move_aside_partial(root: Path) -> list[Path]:
    """Move temporary folders left by a killed save into `root/incomplete/`; return them."""
    moved = []
    for tmp in sorted(root.glob(".tmp-*")):
        aside = root / "incomplete" / f"{tmp.name.lstrip('.')}-{int(time.time())}"
        aside.parent.mkdir(exist_ok=True)
        os.replace(tmp, aside)
        moved.append(aside)
    return moved


def step_folders(root: Path) -> list[Path]:
    """The step folders of `root`, oldest first: real directories named step-XXXXXXXX only
    (a symbolic link is not this run's folder: never loaded, never deleted)."""
    if not root.is_dir() or root.is_symlink():
        return []
    return sorted(
        p for p in root.iterdir() if STEP.fullmatch(p.name) and p.is_dir() and not p.is_symlink()
    )


def mark_best(root: Path, step_dir: Path) -> None:
    _write_pointer(root, "best", step_dir.name)


def prune(root: Path, keep_last: int) -> list[Path]:
    """Delete old step folders beyond the newest `keep_last`, never `latest` or `best`."""
    protected = {read_pointer(root, "latest"), read_pointer(root, "best")}
    steps = step_folders(root)
    removed = []
    for path in steps[: max(0, len(steps) - keep_last)]:
        if path not in protected:
            shutil.rmtree(path)
            removed.append(path)
    return removed


def model_weights(model: torch.nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """The state dict to store: tied aliases dropped, so shared weights are stored once.

    `trainable_only` keeps just the parameters that train (adapter checkpoints: the frozen
    rest is the base checkpoint, referenced from meta.json).
    """
    tied = set(model.tied_parameter_names())
    trains = {name for name, p in model.named_parameters() if p.requires_grad}
    return {
        k: v
        for k, v in model.state_dict().items()
        if k not in tied and (not trainable_only or k in trains)
    }


# ---- reading: nothing outside the step folder is read or named, whatever its files say ------
def read_pointer(root: Path, name: str) -> Path | None:
    """The step folder `root/name` (latest or best) names: a sibling step-XXXXXXXX, never a
    path elsewhere. None when there is no pointer."""
    pointer = root / name
    if not os.path.lexists(pointer):
        return None
    if pointer.is_symlink() or not pointer.is_file():
        raise CheckpointError(f"{pointer}: not a plain file; delete it or save again")
    with pointer.open("rb") as f:
        target = f.read(64).decode("utf-8", "replace").strip()
    if not target:
        return None
    if not STEP.fullmatch(target):
        raise CheckpointError(
            f"{pointer}: does not name a step folder beside it (step-XXXXXXXX); a pointer "
            "never leads outside its checkpoints folder: fix or delete it"
        )
    if (root / target).is_symlink():
        raise CheckpointError(
            f"{root / target}: a symbolic link; a run holds its own step folders (copy it in)"
        )
    return root / target


def resolve(path: str | Path) -> Path:
    """A step folder from a step folder, a checkpoints folder or a run directory.

    A run directory means its `best` checkpoint when there is one, else `latest`.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint or run directory")
    if os.path.lexists(path / META) or os.path.lexists(path / WEIGHTS):
        return path
    root = path / "checkpoints" if os.path.lexists(path / "checkpoints") else path
    if root.is_symlink():
        raise CheckpointError(f"{root}: a symbolic link; a run holds its own checkpoints")
    for pointer in ("best", "latest"):
        target = read_pointer(root, pointer)
        if target is None:
            continue
        if not target.is_dir():
            raise CheckpointError(f"{root / pointer} names {target.name}, which is missing")
        return target
    steps = step_folders(root)
    hint = f"; pass a step folder, e.g. ckpt={steps[-1]}" if steps else ""
    raise CheckpointError(f"{path}: no checkpoint found (no 'best' or 'latest' pointer){hint}")


def _plain_file(step_dir: Path, name: str) -> Path:
    """step_dir/name, refused unless it is a regular file of the folder itself."""
    path = step_dir / name
    if path.is_symlink():
        raise CheckpointError(
            f"{path}: a symbolic link; a checkpoint holds its own files (copy the file in)"
        )
    if not path.is_file():
        raise CheckpointError(f"{step_dir}: missing {name}; the checkpoint is incomplete")
    return path


def _read_text(step_dir: Path, name: str) -> str:
    path = _plain_file(step_dir, name)
    if path.stat().st_size > _MAX_TEXT:
        raise CheckpointError(f"{path}: {path.stat().st_size} bytes, too large to be genuine")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not UTF-8 text; the file is corrupt") from None


def _plain_name(name: object) -> str:
    """A meta.json entry as it may be shown: a plain file name, never a path."""
    return repr(name) if isinstance(name, str) and re.fullmatch(r"[\w.-]{1,64}", name) else "a path"


def _check_meta(meta: Any, path: Path) -> dict[str, Any]:
    """meta.json's fields of the types loading relies on; `files` names only format files."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: not a JSON object; the checkpoint is corrupt")
    files = meta.get("files", {})
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise CheckpointError(f"{path}: 'files' must map file names to SHA-256 checksums")
    for name in files:
        if name not in CHECKSUMMED:
            raise CheckpointError(
                f"{path}: 'files' lists {_plain_name(name)}, which is not a checkpoint file "
                f"({', '.join(CHECKSUMMED)}); the checkpoint is corrupt or was tampered with"
            )
    for key, kind in (("heads", list), ("labels", list), ("objective", str), ("method", str)):
        if key in meta and not isinstance(meta[key], kind):
            raise CheckpointError(f"{path}: '{key}' must be a {kind.__name__}")
    scalars = (str, int, float, bool)
    if not all(isinstance(h, str) for h in meta.get("heads", [])) or not all(
        isinstance(x, scalars) for x in meta.get("labels", [])
    ):
        raise CheckpointError(f"{path}: 'heads' must hold names and 'labels' plain values")
    base = meta.get("base") or {"path": "", "sha256": ""}
    if not (
        isinstance(base, dict) and all(isinstance(base.get(k), str) for k in ("path", "sha256"))
    ):
        raise CheckpointError(f"{path}: 'base' must hold a path and a sha256")
    return meta


def read_meta(step_dir: Path) -> dict[str, Any]:
    try:
        meta = json.loads(_read_text(step_dir, META))
    except json.JSONDecodeError:
        raise CheckpointError(f"{step_dir / META}: corrupt (not valid JSON)") from None
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{step_dir}: checkpoint format_version {version} is not {FORMAT_VERSION}; "
            "upgrade llmtune or re-export the checkpoint"
        )
    return _check_meta(meta, step_dir / META)


def verify(step_dir: Path) -> dict[str, Any]:
    """Check every file against the checksums in meta.json; return the meta.

    The folder holds no symbolic link, and every format file in it has a checksum.
    """
    meta = read_meta(step_dir)
    for entry in sorted(step_dir.iterdir()):
        if entry.is_symlink():
            raise CheckpointError(
                f"{entry}: a symbolic link; a checkpoint holds its own files (copy the file in)"
            )
    files = meta.get("files", {})
    for name in REQUIRED:
        _plain_file(step_dir, name)
    for name in CHECKSUMMED:
        if (step_dir / name).exists() and name not in files:
            raise CheckpointError(f"{step_dir / META}: no checksum for {name}; re-save it")
    for name, expected in files.items():
        if sha256_file(_plain_file(step_dir, name)) != expected:
            raise CheckpointError(
                f"{step_dir / name}: checksum mismatch (corrupt, truncated or modified); "
                "use an earlier step folder"
            )
    return meta


def read_config(step_dir: Path) -> RunConfig:
    """The run config a checkpoint was trained with; plain YAML (no interpolation, so a
    config cannot read environment variables), checked like any config."""
    path = step_dir / CONFIG
    try:
        values = yaml.safe_load(_read_text(step_dir, CONFIG))
    except yaml.YAMLError as exc:
        raise CheckpointError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise CheckpointError(f"{path}: not a config mapping")
    try:
        return build_run_config(values, saved=True)
    except UserError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def read_tokenizer(step_dir: Path) -> Tokenizer:
    path = step_dir / TOKENIZER
    try:
        return Tokenizer.from_str(_read_text(step_dir, TOKENIZER))
    except Exception as exc:  # the Rust parser raises a bare Exception with a long message
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a valid tokenizer ({first})") from None


def load_weights(step_dir: Path) -> dict[str, torch.Tensor]:
    path = _plain_file(step_dir, WEIGHTS)
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: unreadable ({first})") from None


def load_train_state(step_dir: Path) -> dict[str, Any]:
    """Optimizer, step, RNG and data position; never unpickles arbitrary objects."""
    path = step_dir / TRAIN_STATE
    if not os.path.lexists(path):
        raise CheckpointError(f"{step_dir}: no {TRAIN_STATE}; this checkpoint cannot be resumed")
    path = _plain_file(step_dir, TRAIN_STATE)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means an unusable file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: cannot be loaded safely ({first})") from None
    parts = ("progress", "optimizer", "data", "rng")
    if not isinstance(state, dict) or not all(isinstance(state.get(k), dict) for k in parts):
        raise CheckpointError(f"{path}: not a train state ({', '.join(parts)}); it is corrupt")
    return state
