"""train.max_epochs resolved into train.max_steps before training, so the LR schedule, the
progress bar and the ETA all count towards the step the run will stop at."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from omegaconf import OmegaConf

from llmtune.config import layout
from llmtune.config.schema import RunConfig, TrainConfig
from llmtune.data.rows import as_rows
from llmtune.errors import ConfigError


def steps_per_epoch(n_rows: int, train: TrainConfig, world_size: int) -> float:
    """Optimizer steps in one pass over n_rows, as the loader cuts them: each rank takes
    n_rows // world_size rows in whole micro-batches (the incomplete last one is dropped)."""
    micro_batches = (n_rows // world_size) // train.micro_batch_size
    accum = train.global_batch_size // (train.micro_batch_size * world_size)
    return micro_batches / accum


def command_max_steps(command: str) -> int:
    """train.max_steps of configs/<command>.yaml: the value a run gets when it sets none."""
    path = layout.CONFIG_DIR / f"{command}.yaml"
    shipped = OmegaConf.load(path) if path.is_file() else None
    steps = OmegaConf.select(shipped, "train.max_steps") if shipped is not None else None
    return int(steps) if steps is not None else TrainConfig().max_steps


def resolve_epochs(config: RunConfig, train_examples: Any) -> tuple[RunConfig, str]:
    """(config with train.max_steps set from train.max_epochs, the line saying so); the
    config unchanged and "" when max_epochs is off. A set max_steps smaller than the epochs'
    steps wins."""
    t = config.train
    if not t.max_epochs:
        return config, ""
    rows = as_rows(train_examples)
    if not hasattr(rows, "__len__"):
        raise ConfigError(
            f"train.max_epochs={t.max_epochs}: the training data is a stream of unknown size; "
            "use train.max_steps or train.max_tokens"
        )
    n_rows = len(rows)
    per_epoch = steps_per_epoch(n_rows, t, config.hardware.world_size)
    steps = max(1, math.ceil(t.max_epochs * per_epoch))
    line = (
        f"train.max_epochs={t.max_epochs}: {t.max_epochs} x {per_epoch:g} steps = {steps} steps "
        f"({n_rows:,} train rows, {t.global_batch_size} per step)"
    )
    if t.max_steps != command_max_steps(config.command):
        if t.max_steps < steps:
            line += f"; train.max_steps={t.max_steps} is smaller and wins: {t.max_steps} steps"
            steps = t.max_steps
        else:
            line += f"; they are fewer than train.max_steps={t.max_steps}, so the epochs win"
    train = dataclasses.replace(t, max_steps=steps)
    return dataclasses.replace(config, train=train), line
