"""What resuming needs beyond the weights: RNG states, and a check that the run is the same run."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from llmtune import checkpoint
from llmtune.config.load import load_yaml
from llmtune.config.schema import RunConfig
from llmtune.errors import CheckpointError


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
    saved = load_yaml(step_dir / checkpoint.CONFIG)
    diffs = _differences(saved, current)
    if (step_dir / checkpoint.TOKENIZER).read_text() != tokenizer_json:
        diffs.append("tokenizer.json differs")
    if diffs:
        raise CheckpointError(
            f"cannot resume {step_dir}: the run changed ({'; '.join(diffs)}); "
            "use a new hydra.run.dir or checkpoint.resume=never"
        )
