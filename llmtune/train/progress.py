"""What advances during training and survives a resume (Progress), and the decisions read off
it: early stopping on train.best_metric, and the non-finite policy (train.on_nonfinite)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from llmtune.config.schema import TrainConfig
from llmtune.errors import UserError
from llmtune.train import selection


@dataclass
class Progress:
    """Everything that advances during training and must survive a resume."""

    step: int = 0
    tokens: int = 0
    # score of train.best_metric at the best saved step (lower is better: see selection.score);
    # named for the default metric, kept so older checkpoints resume
    best_val_loss: float = math.inf
    best_step: int = -1
    skipped_steps: int = 0  # steps skipped for non-finite gradients (train.on_nonfinite=skip)
    eval_best: float = math.inf  # best score at any evaluation (early stopping)
    evals_since_best: int = 0

    def out_of_patience(self, train: TrainConfig) -> bool:
        return train.patience > 0 and self.evals_since_best >= train.patience

    def track_patience(self, val: dict[str, float], train: TrainConfig) -> str:
        """Count evaluations since train.best_metric last improved; the message to show when
        that count reaches train.patience (early stopping), else ""."""
        value = selection.score(val, train.best_metric)
        if value < self.eval_best:
            self.eval_best, self.evals_since_best = value, 0
            return ""
        self.evals_since_best += 1
        if self.evals_since_best != train.patience:
            return ""
        return (
            f"early stopping: {train.best_metric} has not improved for "
            f"{self.evals_since_best} evaluations"
        )

    def summary(self, val: dict[str, float], seconds: float) -> dict:
        """The run's closing table: steps, tokens, time, last metrics, best step."""
        summary = {"steps": self.step, "tokens": self.tokens, "wall time (s)": round(seconds, 1)}
        summary.update({k: v for k, v in val.items() if k != "step"})
        if self.best_step >= 0:
            summary["best step"] = self.best_step
        return summary


class NonFinite(UserError):
    """The loss or gradients became NaN/inf and train.on_nonfinite=stop."""


def skip_nonfinite(policy: str, progress: Progress) -> None:
    """train.on_nonfinite for a NaN/inf gradient norm (equal on every rank: it comes from the
    reduced gradients): raise NonFinite (stop), or count the skipped step and warn (skip)."""
    step = progress.step + 1
    if policy == "stop":
        raise NonFinite(
            f"non-finite gradient norm at step {step}; lower optim.lr, use hardware.precision="
            "fp32 or train.on_nonfinite=skip (the last checkpoint is intact)"
        )
    progress.skipped_steps += 1
    print(f"warning: non-finite gradients at step {step}; step skipped, parameters unchanged")
