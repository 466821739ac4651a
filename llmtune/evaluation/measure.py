"""What before/after reports (quantized exports, pruning) measure on the same data: the
headline metric of a checkpoint on data.test, latency per batch and the weights' size."""

from __future__ import annotations

import io
import statistics
import time

import torch

from llmtune.config.schema import DataConfig, ScoringConfig
from llmtune.errors import DataError
from llmtune.evaluation.language_model import evaluate_language_model
from llmtune.evaluation.tasks import TASK_SCORING, evaluate_task
from llmtune.loading import LoadedCheckpoint
from llmtune.objectives import OBJECTIVES

# The metric each kind of checkpoint is judged by, and whether higher is better.
METRICS = (("accuracy", True), ("entity_f1", True), ("loss", False))


def headline_metric(
    loaded: LoadedCheckpoint, data: DataConfig, cfg: ScoringConfig, seed: int
) -> tuple[str, float, bool]:
    """(name, value, higher is better) of `loaded` on data.test, read as evaluate reads it."""
    objective = loaded.meta.get("objective", loaded.config.objective.name)
    found = OBJECTIVES.get(objective)
    if found is not None and found.scoring in TASK_SCORING:
        results, _ = evaluate_task(loaded, data, cfg, seed)
    else:
        results = evaluate_language_model(loaded, data, cfg, seed)
    for name, higher in METRICS:
        if name in results:
            return name, float(results[name]), higher
    raise DataError(
        f"data.test={data.test}: no labels to score {objective} on; give a labelled held-out file"
    )


def relative_drop(before: float, after: float, higher: bool) -> float:
    """How much worse `after` is than `before`, relative to it (negative: better)."""
    worse = (before - after) if higher else (after - before)
    return worse / max(abs(before), 1e-12)


@torch.no_grad()
def latency_ms(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], runs: int) -> float:
    """Median milliseconds per call of `model(*inputs)`, after two warm-up calls."""
    for _ in range(2):
        model(*inputs)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model(*inputs)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def timing_batch(
    loaded: LoadedCheckpoint, batch_size: int, with_types: bool
) -> tuple[torch.Tensor, ...]:
    """`batch_size` full-length rows of ordinary tokens (latency ignores content), in an
    exported graph's input order: input_ids, attention_mask[, token_type_ids]."""
    info, length = loaded.info, loaded.config.model.max_seq_len
    low = max(info.special_ids, default=-1) + 1  # specials take the first ids in both families
    ids = torch.randint(low, info.vocab_size, (batch_size, length))
    inputs = [ids, torch.ones_like(ids)]
    if with_types:
        inputs.append(torch.zeros_like(ids))
    return tuple(inputs)


def weights_mb(model: torch.nn.Module) -> float:
    """Megabytes of a model's saved state dict: the weights alone, without the graph a file
    also holds (which dominates the file of a tiny model)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell() / 1e6
