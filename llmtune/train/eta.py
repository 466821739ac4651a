"""A run's remaining time: the steps still to train at the measured pace, plus the
evaluations and checkpoints still due at their measured cost, capped by train.max_time."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from llmtune.config.schema import TrainConfig
from llmtune.config.validate import parse_duration


def due(step: int, end: int, every: int) -> int:
    """Evaluations (or saves) still to run when step `step` is logged (its own evaluation
    comes after the log line): one at every multiple of `every` from `step` to `end`, and the
    loop's final one at `end` when `end` is not such a multiple."""
    if end < step or every <= 0:
        return 0
    return end // every - max(step - 1, 0) // every + (1 if end % every else 0)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


@dataclass
class Eta:
    """Fed by the Reporter: training time per step (a moving average, so a slow first window
    of warm-up fades), and the measured cost of each evaluation and checkpoint."""

    train: TrainConfig
    started: float = field(default_factory=lambda: time.monotonic())
    step_seconds: float | None = None
    tokens_per_step: float | None = None
    costs: dict[str, list[float]] = field(default_factory=lambda: {"eval": [], "save": []})

    def observe_steps(self, steps: int, seconds: float, tokens: int) -> None:
        """`steps` trained in `seconds` of training time (evaluation and saving excluded)."""
        if steps <= 0:
            return
        pace = seconds / steps
        old = self.step_seconds
        self.step_seconds = pace if old is None else 0.6 * old + 0.4 * pace
        self.tokens_per_step = tokens / steps

    def observe(self, kind: str, seconds: float) -> None:
        self.costs[kind].append(seconds)

    def _eval_cost(self) -> float:
        """Measured, or before the first evaluation a forward-only guess: a third of a
        micro-batch's training time for each of train.eval_batches batches."""
        measured = _mean(self.costs["eval"])
        if measured is not None or self.step_seconds is None:
            return measured or 0.0
        accum = max(1, self.train.global_batch_size // max(1, self.train.micro_batch_size))
        return self.train.eval_batches * self.step_seconds / (3 * accum)

    def end_step(self, step: int, tokens: int) -> int:
        """The step the run will stop at: train.max_steps, or earlier by train.max_tokens."""
        end = self.train.max_steps
        if self.train.max_tokens > 0 and self.tokens_per_step:
            left = max(0, self.train.max_tokens - tokens)
            end = min(end, step + math.ceil(left / self.tokens_per_step))
        return end

    def remaining(self, step: int, tokens: int) -> float | None:
        """Seconds until the run ends, or None before any step was timed."""
        if self.step_seconds is None:
            return None
        end = self.end_step(step, tokens)
        evals = due(step, end, self.train.eval_every)
        saves = due(step, end, self.train.save_every)
        seconds = (end - step) * self.step_seconds + evals * self._eval_cost()
        seconds += saves * (_mean(self.costs["save"]) or 0.0)
        max_time = parse_duration(self.train.max_time)
        if max_time > 0:  # stops at the limit, then evaluates and saves once more
            final = self._eval_cost() + (_mean(self.costs["save"]) or 0.0)
            left = max_time - (time.monotonic() - self.started)
            seconds = min(seconds, max(0.0, left) + final)
        return seconds
