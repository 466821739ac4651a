"""Evaluation of reward and DPO checkpoints on preference pairs in data.test: pairwise
accuracy (chosen scored above rejected), mean margins and the loss, through the objective."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from llmtune.config.schema import DataConfig, EvaluateConfig
from llmtune.data import iter_eval_batches
from llmtune.data.labelled import load_table
from llmtune.data.preference import as_pairs, preference_columns
from llmtune.errors import CheckpointError
from llmtune.loading import LoadedCheckpoint, load_checkpoint
from llmtune.objectives import Context, entry
from llmtune.objectives.preference import Reference


def _reference(loaded: LoadedCheckpoint) -> Reference:
    """A DPO checkpoint's reference: its own base with LoRA off, else its init_from model."""
    config = loaded.config
    if config.method.name == "lora":
        return Reference(None)
    try:
        model = load_checkpoint(config.init_from).model
    except CheckpointError as exc:
        raise CheckpointError(
            f"{loaded.step_dir}: DPO metrics compare with the reference init_from="
            f"{config.init_from}, which cannot be loaded ({exc})"
        ) from None
    return Reference(model.to(next(loaded.model.parameters()).device))


@torch.no_grad()
def evaluate_preferences(
    loaded: LoadedCheckpoint, data: DataConfig, cfg: EvaluateConfig, seed: int
) -> dict[str, Any]:
    """Metrics of a reward or dpo checkpoint on the pairs of data.test (or pairs built from
    its instruction data, as data.preference_pairs says)."""
    config = dataclasses.replace(loaded.config, data=data)  # its objective, evaluate's data
    ctx = Context(config, loaded.tokenizer, loaded.info, loaded.model.kind)
    task = entry(loaded.meta["objective"]).make(ctx, [])
    pairs = as_pairs(load_table(data, "test", preference_columns(data)), data, seed, "test")
    if cfg.max_examples:
        pairs = {k: v[: cfg.max_examples] for k, v in pairs.items()}
    examples = task.batch(task.encode(pairs, loaded.config.model.max_seq_len, "test"))
    if task.needs_reference:  # dpo: log-ratios against the init model
        task.reference = _reference(loaded)
    device = next(loaded.model.parameters()).device
    sums: dict[str, float] = {"loss": 0.0, "correct": 0.0, "n": 0.0}
    for batch in iter_eval_batches(examples, cfg.batch_size):
        batch = {k: v.to(device) for k, v in task.prepare(batch, None).items()}
        term = task.losses(loaded.model, batch)[task.name]
        sums["loss"] += float(term.loss_sum)
        sums["correct"] += float(term.n_correct)
        sums["n"] += float(task.count(batch)[task.name])
        for key, (total, _) in (term.extra or {}).items():
            sums[key] = sums.get(key, 0.0) + float(total)
    n = max(sums.pop("n"), 1.0)
    results = {"task": task.name, "n_pairs": int(n), "pairwise_accuracy": sums.pop("correct") / n}
    return {**results, **{k: v / n for k, v in sums.items()}}
