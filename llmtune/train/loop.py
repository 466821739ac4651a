"""THE training loop, shared by pretrain and finetune.

Per step: set the LR; draw targets for every micro-batch and count them; forward and
backward each micro-batch with its loss terms divided by the step's total counts; clip;
step; then log, evaluate and checkpoint on their schedules; stop on steps (or epochs, resolved
into steps up front), tokens or time.
Its collaborators: Progress (what advances; early stopping, the non-finite policy),
Throughput (tokens/s, MFU), RunCheckpoints (save, resume).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from llmtune.config.schema import RunConfig
from llmtune.config.validate import parse_duration
from llmtune.objectives import Objective
from llmtune.train import distributed, evaluation, parallel, preemption, streams
from llmtune.train.checkpointing import RunCheckpoints, RunFiles
from llmtune.train.epochs import resolve_epochs
from llmtune.train.hardware import Runtime, prepare_model
from llmtune.train.optim import build_optimizer, lr_at
from llmtune.train.progress import Progress, skip_nonfinite
from llmtune.train.report import Reporter
from llmtune.train.throughput import Throughput

Batch = dict[str, Tensor]


@dataclass
class TrainSetup:
    config: RunConfig
    model: torch.nn.Module
    objective: Objective
    train_examples: Batch
    val_examples: Batch
    tokenizer_json: str
    run_dir: Path
    runtime: Runtime
    cache_dir: Path
    meta: dict = field(default_factory=dict)  # extra fields for meta.json (e.g. heads)
    trainable_only: bool = False  # adapter runs: checkpoints hold only the trained weights


class Trainer:
    def __init__(self, setup: TrainSetup) -> None:
        self.s, cfg, self.objective = setup, setup.config, setup.objective
        self.config, self.train = cfg, cfg.train
        self.model = prepare_model(setup.model.to(setup.runtime.device), cfg.hardware)
        # DDP/FSDP wrap the model before the optimizer sees its (possibly sharded) parameters.
        self.parallel = parallel.Parallel(self.model, setup.objective, cfg.hardware.strategy)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        # What trains is settled before the loop (LoRA, freezing, FSDP's sharded parameters):
        # listed once, not by walking every module at each step (~0.1 ms a step on bert-tiny)
        self.trained = [p for p in self.model.parameters() if p.requires_grad]
        self.accum = cfg.train.global_batch_size // (
            cfg.train.micro_batch_size * cfg.hardware.world_size
        )
        self.batches = self.parallel.batches(setup.train_examples, cfg)
        # train.max_epochs becomes train.max_steps before anything reads the step count
        cfg, epochs = resolve_epochs(cfg, setup.train_examples)
        if epochs and self.parallel.is_main:
            print(epochs)
        self.s = replace(setup, config=cfg)
        self.config, self.train = cfg, cfg.train
        self.progress = Progress()
        files = RunFiles(setup.tokenizer_json, setup.meta, setup.trainable_only)
        self.checkpoints = RunCheckpoints(
            cfg, self.parallel, self.optimizer, self.batches, setup.run_dir, files
        )
        self.max_time = parse_duration(cfg.train.max_time)
        world = self.parallel.info.world_size
        self.throughput = Throughput(
            setup.model, setup.objective, setup.runtime, setup.cache_dir, world
        )

    # ---- the loop -------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        """Train until a stop condition; return the final metrics."""
        cfg, resumed = self.train, self.checkpoints.resume()
        if resumed is None:
            # Dropout draws from the global RNG: start it from the seed whatever ran before,
            # a stream of its own on each rank.
            torch.manual_seed(streams.rank_seed(self.config.seed, self.parallel.info.rank))
        else:
            self.progress = resumed
            if resumed.step >= cfg.max_steps:
                print(f"run already finished at step {resumed.step}; nothing to do")
                return {}
        report = distributed.reporter(self.s.run_dir, cfg, self.progress.step)
        restore_signals = preemption.install()
        start, val, saved_at = time.perf_counter(), {}, -1
        self.throughput.restart()
        try:
            while not self._should_stop(start):
                self._train_step()
                step = self.progress.step
                if step % cfg.log_every == 0 or step == cfg.max_steps:
                    report.log(self._train_record())
                with self.throughput.paused():  # evaluating and saving are not training
                    if step % cfg.eval_every == 0:
                        val = self._evaluate_and_log(report)
                        if stopping := self.progress.track_patience(val, cfg):
                            report.message(stopping)
                    if step % cfg.save_every == 0:
                        self._save(report, val)
                        saved_at = step
            if self.progress.step != saved_at:
                if not self.preempted and (not val or val.get("step") != self.progress.step):
                    val = self._evaluate_and_log(report)
                self._save(report, val)
        finally:
            restore_signals()
            summary = self.progress.summary(val, time.perf_counter() - start)
            report.close({**summary, "run dir": str(self.s.run_dir)})
        if self.preempted:
            preemption.stop(self.progress.step, str(self.checkpoints.root / "latest"))
        return val

    def _should_stop(self, start: float) -> bool:
        t = self.train
        late = self.max_time > 0 and time.perf_counter() - start >= self.max_time
        # Clocks and signals differ per rank: agree, or one rank would wait for the others.
        late, self.preempted = distributed.any_rank(late, preemption.requested())  # save, exit
        return (
            self.progress.step >= t.max_steps
            or (t.max_tokens > 0 and self.progress.tokens >= t.max_tokens)
            or late
            or self.preempted
            or self.progress.out_of_patience(t)
        )

    def _train_step(self) -> None:
        lr = lr_at(self.progress.step, self.config.optim, self.train.max_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with self.throughput.waiting():
            rngs = streams.micro_batch_rngs(
                self.config.seed, self.progress.step, self.parallel.info.rank, self.accum
            )
            micro_batches = [self.objective.prepare(next(self.batches), rng) for rng in rngs]
        step_loss, step_tokens, step_flops = self.accumulate_gradients(micro_batches)
        step_tokens, step_flops = distributed.global_counts(step_tokens, step_flops)
        self._optimizer_step()
        self.progress.step += 1
        self.progress.tokens += step_tokens
        self.throughput.add_step(step_loss, step_tokens, step_flops)

    def accumulate_gradients(self, micro_batches: list[Batch]) -> tuple[Tensor, int, float]:
        """Backward every micro-batch with each loss term divided by the step's total count.

        Returns the step's loss (a tensor: no device sync), input tokens and model FLOPs.
        """
        objective, device = self.objective, self.s.runtime.device
        batch_counts = [objective.count(batch) for batch in micro_batches]
        counts = _total_counts(batch_counts)
        step_loss, step_tokens, step_flops = torch.zeros((), device=device), 0, 0.0
        for i, batch in enumerate(micro_batches):
            step_flops += self.throughput.flops(batch, batch_counts[i])
            step_tokens += objective.input_tokens(batch)
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with self.parallel.sync(last=i == len(micro_batches) - 1):
                with self.s.runtime.autocast():
                    terms = self.parallel.losses(batch)
                loss = sum(terms[name].loss_sum / counts[name] for name in terms)
                loss.backward()
            step_loss += loss.detach()
        return step_loss, step_tokens, step_flops

    def _optimizer_step(self) -> None:
        clip = self.config.optim.grad_clip or math.inf
        # Gradients are already reduced across ranks, so every rank sees the same norm.
        norm = self.parallel.clip_grad_norm(self.trained, clip)
        if not torch.isfinite(norm):
            skip_nonfinite(self.train.on_nonfinite, self.progress)
            self.optimizer.zero_grad(set_to_none=True)  # skipped: the parameters never see NaN
            return
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _train_record(self) -> dict:
        rates = self.throughput.close_window()
        return {
            "step": self.progress.step,
            "loss": rates.pop("loss"),
            "lr": self.optimizer.param_groups[0]["lr"],
            "tokens": self.progress.tokens,
            **rates,  # tokens_per_s, tflops_per_s, mfu, data_wait_share
            # objective statistics, e.g. PPO's mean reward, KL and response length
            **self.objective.train_metrics(),
        }

    # ---- evaluation and checkpoints ----------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Validation metrics of the current model (see train/evaluation.py)."""
        self.model.eval()
        try:
            return evaluation.validation_metrics(
                self.parallel.losses,
                self.objective,
                self.s.val_examples,
                self.config,
                self.s.runtime,
            )
        finally:
            self.model.train()

    def _evaluate_and_log(self, report: Reporter) -> dict[str, float]:
        with report.timed("eval"):
            metrics = {"step": self.progress.step, **self.evaluate()}
        report.log(metrics)
        return metrics

    def _save(self, report: Reporter, val: dict[str, float]) -> None:
        with report.timed("save"):
            self.checkpoints.save(self.progress, val)


def _total_counts(batch_counts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Targets per loss term over the whole step and all ranks (at least 1: empty adds 0)."""
    totals: dict[str, Tensor] = {}
    for counts in batch_counts:
        for name, n in counts.items():
            totals[name] = totals.get(name, 0) + n
    totals = distributed.sum_counts(totals)  # over ranks: every rank divides by the global count
    return {name: n.clamp(min=1).float() for name, n in totals.items()}
