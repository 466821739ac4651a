"""Where a run starts: which step folder checkpoint.resume continues from (never writing over
an earlier run), RNG states, and a check that the resumed run is the same run."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import torch

from llmtune import checkpoint
from llmtune.config.schema import CheckpointConfig, RunConfig
from llmtune.errors import CheckpointError
from llmtune.train import distributed

START_OVER = "checkpoint.resume=never checkpoint.overwrite=true"


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _differences(saved: RunConfig, current: RunConfig) -> list[str]:
    """Fields that must not change across a resume (architecture, tokenizer, batch layout)."""
    pairs = [
        ("model", saved.model, current.model),
        ("tokenizer", saved.tokenizer, current.tokenizer),
        ("objective", saved.objective, current.objective),
    ]
    diffs = []
    for section, old, new in pairs:
        for key, value in vars(old).items():
            if getattr(new, key) != value:
                diffs.append(f"{section}.{key} {value!r} -> {getattr(new, key)!r}")
    for key in ("global_batch_size", "micro_batch_size"):
        old, new = getattr(saved.train, key), getattr(current.train, key)
        if old != new:
            diffs.append(f"train.{key} {old!r} -> {new!r}")
    if saved.seed != current.seed:
        diffs.append(f"seed {saved.seed!r} -> {current.seed!r}")
    return diffs


def check_resumable(step_dir: Path, current: RunConfig, tokenizer_json: str) -> None:
    """Refuse to resume a checkpoint written by a different run setup, listing each change."""
    saved = checkpoint.read_config(step_dir)
    diffs = _differences(saved, current)
    if (step_dir / checkpoint.TOKENIZER).read_text() != tokenizer_json:
        diffs.append("tokenizer.json differs")
    if diffs:
        raise CheckpointError(
            f"cannot resume {step_dir}: the run changed ({'; '.join(diffs)}); "
            "use a new hydra.run.dir or checkpoint.resume=never"
        )


def complete_steps(root: Path) -> list[Path]:
    """Step folders that pass verification, newest first."""
    good = []
    for path in reversed(checkpoint.step_folders(root)):
        try:
            checkpoint.verify(path)
        except CheckpointError:
            continue
        good.append(path)
    return good


def resume_dir(root: Path, cfg: CheckpointConfig) -> Path | None:
    """The step folder checkpoint.resume says to continue from; None to start afresh.

    Starting afresh never writes over an earlier run's checkpoints: refused, or with
    checkpoint.overwrite=true they are moved aside first.
    """
    if cfg.resume == "never":
        _start_over(root, cfg.overwrite)
        return None
    if cfg.resume != "auto":
        step_dir = checkpoint.resolve(cfg.resume)
        checkpoint.verify(step_dir)
        return step_dir
    if not root.is_dir():
        return None
    for aside in distributed.main_only(checkpoint.move_aside_partial, root):
        print(f"moved an incomplete checkpoint left by an interrupted save to {aside}")
    latest = checkpoint.read_pointer(root, "latest")
    if latest is None:
        return _newest_intact(root)
    try:
        checkpoint.verify(latest)
        return latest
    except CheckpointError as exc:
        intact = complete_steps(root)
        if not cfg.fallback or not intact:
            raise CheckpointError(
                f"{exc}; or set checkpoint.fallback=true to resume from the newest intact one"
            ) from None
        print(f"warning: {exc}; falling back to {intact[0]}")
        return intact[0]


def _newest_intact(root: Path) -> Path | None:
    """Without a `latest` pointer: the newest intact step folder, said aloud, else refused."""
    if not checkpoint.step_folders(root):
        return None
    intact = complete_steps(root)
    if not intact:
        raise CheckpointError(
            f"{root} holds step folders but no 'latest' pointer and none of them is intact; "
            f"nothing was changed: use a new hydra.run.dir, or {START_OVER} (moves them aside)"
        )
    print(f"{root / 'latest'} is missing; resuming from the newest intact step folder {intact[0]}")
    return intact[0]


def _start_over(root: Path, overwrite: bool) -> None:
    """checkpoint.resume=never: refuse a folder holding checkpoints unless asked to overwrite,
    then move them (and their metrics) aside to <run dir>/replaced-<time>/, never delete."""
    pointers = [n for n in ("latest", "best") if (root / n).exists()]
    steps = checkpoint.step_folders(root)
    if not overwrite:
        if steps or pointers:
            raise CheckpointError(
                f"{root} holds the checkpoints of an earlier run (newest "
                f"{steps[-1].name if steps else 'unknown'}); checkpoint.resume=never would write "
                "over them: resume it (checkpoint.resume=auto), use a new hydra.run.dir, or set "
                "checkpoint.overwrite=true to move them aside"
            )
        return
    for aside in distributed.main_only(_move_aside, root):
        print(f"checkpoint.overwrite=true: the earlier run's checkpoints are now in {aside}")


def _move_aside(root: Path) -> list[Path]:
    """The run folder's checkpoints and metrics.jsonl moved into replaced-<time>/ beside them."""
    run_dir = root.parent
    if not root.exists():
        return []
    aside = run_dir / f"replaced-{time.strftime('%Y%m%d-%H%M%S')}"
    aside.mkdir()
    root.rename(aside / root.name)
    for name in ("metrics.jsonl", "tensorboard"):
        if (run_dir / name).exists():
            (run_dir / name).rename(aside / name)
    return [aside]
