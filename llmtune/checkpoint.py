"""The one on-disk checkpoint format, written atomically and read by every subcommand.

<run dir>/checkpoints/{latest,best,step-XXXXXXXX/{model.safetensors, config.yaml,
tokenizer.json, train_state.pt, meta.json}}; meta.json holds checksums of the other files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from llmtune import __version__
from llmtune.errors import CheckpointError
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


def read_pointer(root: Path, name: str) -> Path | None:
    pointer = root / name
    if not pointer.is_file():
        return None
    target = pointer.read_text().strip()
    return root / target if target else None


def _write_step(tmp: Path, step: int, weights: dict[str, torch.Tensor], contents) -> None:
    """Fill a temporary step folder with every file and meta.json's checksums."""
    save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, tmp / WEIGHTS)
    fault_point("checkpoint.after_weights")
    (tmp / CONFIG).write_text(contents.config_yaml)
    (tmp / TOKENIZER).write_text(contents.tokenizer_json)
    if contents.train_state is not None:
        torch.save(contents.train_state, tmp / TRAIN_STATE)
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
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_name(step)
    tmp = root / f".tmp-{step_name(step)}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write_step(tmp, step, weights, contents)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(
            f"could not write checkpoint {final} ({exc.strerror or exc}); earlier checkpoints "
            "are intact and nothing was pruned; free disk space and resume"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():  # re-saving the same step (e.g. final save after a periodic one)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(root)
    fault_point("checkpoint.before_latest")
    _write_pointer(root, "latest", final.name)
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


def complete_steps(root: Path) -> list[Path]:
    """Step folders that pass verification, newest first (for an explicit fallback)."""
    good = []
    for path in sorted(root.glob("step-*"), reverse=True):
        try:
            verify(path)
        except CheckpointError:
            continue
        good.append(path)
    return good


def mark_best(root: Path, step_dir: Path) -> None:
    _write_pointer(root, "best", step_dir.name)


def prune(root: Path, keep_last: int) -> list[Path]:
    """Delete old step folders beyond the newest `keep_last`, never `latest` or `best`."""
    protected = {read_pointer(root, "latest"), read_pointer(root, "best")}
    steps = sorted(p for p in root.glob("step-*") if p.is_dir())
    removed = []
    for path in steps[: max(0, len(steps) - keep_last)]:
        if path not in protected:
            shutil.rmtree(path)
            removed.append(path)
    return removed


def resolve(path: str | Path) -> Path:
    """A step folder from a step folder, a checkpoints folder or a run directory.

    A run directory means its `best` checkpoint when there is one, else `latest`.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint or run directory")
    if (path / META).is_file() or (path / WEIGHTS).is_file():
        return path
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    for pointer in ("best", "latest"):
        target = read_pointer(root, pointer)
        if target is not None:
            if not target.is_dir():
                raise CheckpointError(f"{root / pointer} names {target.name}, which is missing")
            return target
    raise CheckpointError(f"{path}: no checkpoint found (no step folder, 'best' or 'latest')")


def read_meta(step_dir: Path) -> dict[str, Any]:
    try:
        meta = json.loads((step_dir / META).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{step_dir}: missing {META}; the checkpoint is incomplete") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{step_dir / META}: corrupt (not valid JSON)") from None
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{step_dir}: checkpoint format_version {version} is not {FORMAT_VERSION}; "
            "upgrade llmtune or re-export the checkpoint"
        )
    return meta


def verify(step_dir: Path) -> dict[str, Any]:
    """Check every file against the checksums in meta.json; return the meta."""
    meta = read_meta(step_dir)
    for name in REQUIRED:
        if not (step_dir / name).is_file():
            raise CheckpointError(f"{step_dir}: missing {name}; the checkpoint is incomplete")
    for name, expected in meta.get("files", {}).items():
        path = step_dir / name
        if not path.is_file():
            raise CheckpointError(f"{step_dir}: missing {name}; the checkpoint is incomplete")
        if sha256_file(path) != expected:
            raise CheckpointError(
                f"{path}: checksum mismatch (corrupt, truncated or modified); "
                "use an earlier step folder"
            )
    return meta


def _trainable_names(model: torch.nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def model_weights(model: torch.nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """The state dict to store: tied aliases dropped, so shared weights are stored once.

    `trainable_only` keeps just the parameters that train (adapter checkpoints: the frozen
    rest is the base checkpoint, referenced from meta.json).
    """
    tied = set(model.tied_parameter_names())
    keep = _trainable_names(model) if trainable_only else None
    return {
        k: v for k, v in model.state_dict().items() if k not in tied and (keep is None or k in keep)
    }


def load_into(
    model: torch.nn.Module,
    weights: dict[str, torch.Tensor],
    source: Path,
    trainable_only: bool = False,
) -> None:
    """Load weights strictly: only tied aliases may be absent; names and shapes must match.

    `trainable_only`: the weights are exactly the model's trainable parameters (an adapter).
    """
    expected = model.state_dict()
    if trainable_only:
        keep = _trainable_names(model)
        expected = {k: v for k, v in expected.items() if k in keep}
    tied = set(model.tied_parameter_names())
    missing = sorted(set(expected) - set(weights) - tied)
    unexpected = sorted(set(weights) - set(expected))
    wrong = sorted(k for k in set(weights) & set(expected) if weights[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        parts = [
            f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", wrong))
            if keys
        ]
        raise CheckpointError(
            f"{source}: weights do not fit this model ({'; '.join(parts)}); "
            "is it a checkpoint of another architecture?"
        )
    model.load_state_dict(weights, strict=False)


def load_weights(step_dir: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(step_dir / WEIGHTS)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{step_dir / WEIGHTS}: unreadable ({exc})") from None


def load_train_state(step_dir: Path) -> dict[str, Any]:
    """Optimizer, step, RNG and data position; never unpickles arbitrary objects."""
    path = step_dir / TRAIN_STATE
    if not path.is_file():
        raise CheckpointError(f"{step_dir}: no {TRAIN_STATE}; this checkpoint cannot be resumed")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means an unusable file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: cannot be loaded safely ({first})") from None
