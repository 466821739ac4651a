"""Model selection during training: scores for `train.best_metric` (best checkpoint and early
stopping) and the macro-F1 that classification objectives add to each evaluation."""

from __future__ import annotations

import torch
from torch import Tensor

from llmtune.errors import ConfigError

# Plain names copied from the single term's metrics (val_accuracy = val_mlm_accuracy, ...):
# in metrics.jsonl for train.best_metric and plots, but not printed twice.
ALIASES = ("val_accuracy", "val_f1_macro")


def lower_is_better(metric: str) -> bool:
    """Losses and perplexities fall as a model improves; accuracies and F1 rise."""
    return metric.endswith("loss") or metric.endswith("perplexity")


def score(metrics: dict[str, float], metric: str) -> float:
    """`metric` as a score where lower is better (higher-is-better metrics change sign)."""
    if metric not in metrics:
        shown = ", ".join(sorted(k for k in metrics if k.startswith("val_")))
        raise ConfigError(
            f"train.best_metric={metric}: not measured by this run; use one of {shown}"
        )
    value = metrics[metric]
    return value if lower_is_better(metric) else -value


def f1_macro(predicted: Tensor, target: Tensor) -> float:
    """Unweighted mean of per-class F1 over the classes present in targets or predictions."""
    classes = torch.unique(torch.cat([predicted, target]))
    scores = []
    for c in classes:
        tp = ((predicted == c) & (target == c)).sum().item()
        fp = ((predicted == c) & (target != c)).sum().item()
        fn = ((predicted != c) & (target == c)).sum().item()
        scores.append(2 * tp / max(2 * tp + fp + fn, 1))
    return sum(scores) / max(len(scores), 1)


def classification_metrics(
    predictions: dict[str, list[tuple[Tensor, Tensor]]], metrics: dict[str, float]
) -> dict[str, float]:
    """val_<term>_f1_macro per classification term; with a single term in the run, plain
    val_accuracy and val_f1_macro too (the names train.best_metric usually picks)."""
    out: dict[str, float] = {}
    for name, pairs in predictions.items():
        predicted = torch.cat([p.cpu() for p, _ in pairs])
        target = torch.cat([t.cpu() for _, t in pairs])
        out[f"val_{name}_f1_macro"] = f1_macro(predicted, target)
    terms = [
        k[len("val_") : -len("_loss")] for k in metrics if k.endswith("_loss") and k != "val_loss"
    ]
    if len(terms) == 1:
        out["val_accuracy"] = metrics[f"val_{terms[0]}_accuracy"]
        if f"val_{terms[0]}_f1_macro" in out:
            out["val_f1_macro"] = out[f"val_{terms[0]}_f1_macro"]
    return out
