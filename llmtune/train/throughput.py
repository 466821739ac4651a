"""Throughput over a logging window: mean loss, tokens/s, model FLOP/s, MFU against the
device peak, and the share of time spent waiting for data. Evaluating and saving are paused
out of the window: they are not training."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from llmtune.objectives import Objective
from llmtune.train import distributed
from llmtune.train.flops import device_peak_flops, trained_body_flops, vocab_head_flops
from llmtune.train.hardware import Runtime

Batch = dict[str, Tensor]


@dataclass
class Window:
    """What the steps since the last log added up to."""

    loss: Tensor = field(default_factory=lambda: torch.zeros(()))
    steps: int = 0
    tokens: int = 0
    flops: float = 0.0
    wait: float = 0.0  # seconds waiting for the next micro-batches
    paused: float = 0.0  # seconds evaluating and saving
    start: float = field(default_factory=time.perf_counter)


class Throughput:
    """Counts model FLOPs per micro-batch and turns a window into rates for the metrics file."""

    def __init__(
        self,
        model: torch.nn.Module,
        objective: Objective,
        runtime: Runtime,
        cache_dir: Path,
        world: int,
    ) -> None:
        self.objective, self.runtime, self.cache_dir, self.world = (
            objective,
            runtime,
            cache_dir,
            world,
        )
        # Model FLOPs: what trains is fixed for the run, so the per-model part is counted once.
        self.body_flops = trained_body_flops(model)
        # the vocabulary projection at each LM target; classification heads are negligible
        lm_head = model.heads[model.family.lm_head] if objective.vocab_head else None
        self.head_flops = vocab_head_flops(lm_head) if lm_head is not None else 0.0
        self.window = Window()
        self.peak = self._device_peak()
        self.peak_rechecked = False

    def _device_peak(self, achieved: float = 0.0) -> float | None:
        """Peak FLOP/s of all ranks together (see flops.device_peak_flops)."""
        device, precision = self.runtime.device, self.runtime.precision
        per_device = device_peak_flops(device, precision, self.cache_dir, achieved / self.world)
        return self.world * per_device if per_device else None

    def restart(self) -> None:
        """A new window from now (training starts or resumes)."""
        self.window = Window()

    def flops(self, batch: Batch, counts: dict[str, Tensor]) -> float:
        """Model FLOPs of one micro-batch's forward and backward."""
        width = batch["input_ids"].shape[1]  # task batches are cut to their longest row
        body = batch["input_ids"].numel() * self.body_flops.at(width)
        return body + float(counts.get(self.objective.lm_term, 0)) * self.head_flops

    @contextmanager
    def waiting(self) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.window.wait += time.perf_counter() - started

    @contextmanager
    def paused(self) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.window.paused += time.perf_counter() - started

    def add_step(self, loss: Tensor, tokens: int, flops: float) -> None:
        w = self.window
        w.loss = w.loss + loss.cpu()
        w.steps, w.tokens, w.flops = w.steps + 1, w.tokens + tokens, w.flops + flops

    def close_window(self) -> dict:
        """The window's mean loss and rates; a new window starts."""
        w, self.window = self.window, Window()
        seconds = max(time.perf_counter() - w.start - w.paused, 1e-9)
        flops_per_s = w.flops / seconds
        if self.peak and flops_per_s > self.peak and not self.peak_rechecked:
            self.peak_rechecked = True  # once per run: the new figure is the best we can do
            self.peak = self._device_peak(achieved=flops_per_s)
        return {
            "loss": float(distributed.all_sum(w.loss)) / max(1, w.steps),
            "tokens_per_s": w.tokens / seconds,
            "tflops_per_s": flops_per_s / 1e12,
            "mfu": flops_per_s / self.peak if self.peak else None,
            "data_wait_share": w.wait / seconds,
        }
