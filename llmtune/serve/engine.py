"""The one thread that runs the model for `llmtune serve`: requests queue up, and prompts
with the same sampling settings, from one or several requests, are completed together
(main's batched, KV-cached `generate`); embeddings and classification run in turn."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from llmtune.config.schema import EvaluateConfig, ServeConfig
from llmtune.models.generation import Generation, OnToken, generate
from llmtune.serve.model import Served


@dataclass
class GenerationJob:
    prompts: list[list[int]]
    sampling: EvaluateConfig  # jobs with equal settings share a batch
    on_token: OnToken | None = None  # (prompt index in this job, token), from the engine thread
    future: Future = field(default_factory=Future)


@dataclass
class Task:
    """Any other model call (embeddings, classification): run alone, in arrival order."""

    work: Callable[[], Any]
    future: Future = field(default_factory=Future)


class Engine:
    """Start with `start()`, hand work over with `submit()`, end with `stop()`."""

    def __init__(self, served: Served, cfg: ServeConfig, seed: int) -> None:
        self.served, self.cfg = served, cfg
        self.generator = torch.Generator().manual_seed(seed)
        self._queue: queue.Queue[GenerationJob | Task | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="llmtune-serve", daemon=True)
        self.batches: list[int] = []  # prompts per generate call (what batching achieved)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def submit(self, job: GenerationJob | Task) -> Future:
        self._queue.put(job)
        return job.future

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs, tasks, stop = self._gather(first)
            groups: dict[EvaluateConfig, list[GenerationJob]] = {}
            for job in jobs:
                groups.setdefault(job.sampling, []).append(job)
            for group in groups.values():
                self._generate(group)
            for task in tasks:
                _settle(task.future, task.work)
            if stop:
                return

    def _gather(self, first: GenerationJob | Task) -> tuple[list, list, bool]:
        """`first` and whatever arrives within batch_wait_ms, up to batch_size prompts."""
        jobs = [first] if isinstance(first, GenerationJob) else []
        tasks = [first] if isinstance(first, Task) else []
        if not jobs:
            return jobs, tasks, False
        waiting = sum(len(j.prompts) for j in jobs)
        deadline = time.monotonic() + self.cfg.batch_wait_ms / 1e3
        while waiting < self.cfg.batch_size:
            left = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return jobs, tasks, True
            if isinstance(item, Task):
                tasks.append(item)
            else:
                jobs.append(item)
                waiting += len(item.prompts)
        return jobs, tasks, False

    def _generate(self, group: list[GenerationJob]) -> None:
        """One generate call over every prompt of `group`; results split back per job."""
        owners = [(job, i) for job in group for i in range(len(job.prompts))]

        def heard(index: int, token: int) -> None:
            job, i = owners[index]
            if job.on_token is not None:
                job.on_token(i, token)

        def run() -> list[Generation]:
            prompts = [p for job in group for p in job.prompts]
            self.batches.append(len(prompts))
            cfg = group[0].sampling
            eos = self.served.loaded.info.eos_id
            return generate(
                self.served.loaded.model, prompts, cfg, eos, self.generator, True, heard
            )

        done: Future = Future()
        _settle(done, run)
        start = 0
        for job in group:
            n = len(job.prompts)
            if done.exception() is not None:
                job.future.set_exception(done.exception())
            else:
                job.future.set_result(done.result()[start : start + n])
            start += n


def _settle(future: Future, work: Callable[[], Any]) -> None:
    """Run `work`; its result or its exception goes to `future` (the thread never dies)."""
    try:
        future.set_result(work())
    except Exception as exc:  # noqa: BLE001 - handed to the request, which answers 500
        future.set_exception(exc)
