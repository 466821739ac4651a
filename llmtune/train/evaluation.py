"""Validation during training: loss per term, perplexity, accuracy and F1 on fixed targets,
plus what the objective measures over whole rows (token_cls: entity-level F1)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from llmtune.config.schema import RunConfig
from llmtune.data import iter_eval_batches
from llmtune.objectives import Objective, TermResult
from llmtune.train import selection
from llmtune.train.hardware import Runtime

Batch = dict[str, Tensor]


@torch.no_grad()
def validation_metrics(
    losses: Callable[[Batch], dict[str, TermResult]],
    objective: Objective,
    val_examples: Batch,
    cfg: RunConfig,
    runtime: Runtime,
) -> dict[str, float]:
    """Metrics over the validation examples; `losses` runs the (wrapped) model on a batch."""
    # The same generator every evaluation: identical masks, so evaluations compare.
    generator = torch.Generator().manual_seed(cfg.seed + 7919)
    sums: dict[str, float] = {}
    predictions: dict[str, list] = {}
    rows: list[tuple[list[int], list[int]]] = []  # per-row predictions for row_metrics
    for batch in iter_eval_batches(
        val_examples, cfg.train.micro_batch_size, cfg.train.eval_batches
    ):
        batch = objective.prepare(batch, generator)
        counts = objective.count(batch)
        batch = {k: v.to(runtime.device) for k, v in batch.items()}
        with runtime.autocast():
            terms = losses(batch)
        for name, term in terms.items():
            sums[f"{name}_loss"] = sums.get(f"{name}_loss", 0.0) + float(term.loss_sum)
            sums[f"{name}_correct"] = sums.get(f"{name}_correct", 0.0) + float(term.n_correct)
            sums[f"{name}_count"] = sums.get(f"{name}_count", 0.0) + float(counts[name])
            for key, (total, n) in (term.extra or {}).items():
                for suffix, value in (("sum", total), ("n", n)):
                    extra_key = f"{name}_{key}.{suffix}"
                    sums[extra_key] = sums.get(extra_key, 0.0) + float(value)
            if term.predicted is not None:
                predictions.setdefault(name, []).append((term.predicted, term.target))
            if term.row_sizes is not None:
                rows.extend(_split_rows(term))
    lm_term = objective.lm_term if objective.perplexity else ""
    metrics = _mean_metrics(sums, lm_term)
    metrics.update(selection.classification_metrics(predictions, metrics))
    if rows:  # the objective offers row_metrics whenever its terms return row_sizes
        metrics.update({f"val_{k}": v for k, v in objective.row_metrics(rows).items()})
    return metrics


def _split_rows(term: TermResult) -> list[tuple[list[int], list[int]]]:
    """The flat (predicted, target) of a term cut back into its rows (sentences)."""
    sizes = term.row_sizes.cpu().tolist()
    predicted = term.predicted.cpu().split(sizes)
    target = term.target.cpu().split(sizes)
    return [(p.tolist(), t.tolist()) for p, t in zip(predicted, target)]


def _mean_metrics(sums: dict[str, float], lm_term: str) -> dict[str, float]:
    """Per-term mean loss and accuracy, their total, and perplexity of the LM term."""
    metrics: dict[str, float] = {}
    names = [k[: -len("_loss")] for k in sums if k.endswith("_loss")]
    total = 0.0
    for name in names:
        count = max(sums[f"{name}_count"], 1.0)
        mean = sums[f"{name}_loss"] / count
        total += mean
        metrics[f"val_{name}_loss"] = mean
        metrics[f"val_{name}_accuracy"] = sums[f"{name}_correct"] / count
    metrics["val_loss"] = total
    for key in sums:
        if key.endswith(".sum"):  # TermResult.extra: reported as their mean per counted item
            metrics[f"val_{key[:-4]}"] = sums[key] / max(sums[key[:-4] + ".n"], 1.0)
    if lm_term in names:
        metrics["val_perplexity"] = math.exp(min(metrics[f"val_{lm_term}_loss"], 50.0))
    return metrics
