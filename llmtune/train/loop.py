"""THE training loop, shared by pretrain and finetune.

Per step: set the LR; draw targets for every micro-batch and count them; forward and
backward each micro-batch with its loss terms divided by the step's total counts; clip;
step; then log, evaluate and checkpoint on their schedules; stop on steps, tokens or time.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from llmtune import checkpoint
from llmtune.config.load import to_yaml
from llmtune.config.schema import RunConfig
from llmtune.config.validate import parse_duration
from llmtune.errors import CheckpointError
from llmtune.objectives import Objective
from llmtune.train import distributed, evaluation, parallel, preemption, selection, streams
from llmtune.train.flops import device_peak_flops, trained_body_flops, vocab_head_flops
from llmtune.train.hardware import Runtime, prepare_model
from llmtune.train.optim import build_optimizer, lr_at
from llmtune.train.report import Reporter
from llmtune.train.resume import check_resumable, resume_dir

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


class Trainer:
    def __init__(self, setup: TrainSetup) -> None:
        self.s = setup
        cfg = setup.config
        self.model = prepare_model(setup.model.to(setup.runtime.device), cfg.hardware)
        # DDP/FSDP wrap the model before the optimizer sees its (possibly sharded) parameters.
        self.parallel = parallel.Parallel(self.model, setup.objective, cfg.hardware.strategy)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.accum = cfg.train.global_batch_size // (
            cfg.train.micro_batch_size * cfg.hardware.world_size
        )
        self.batches = self.parallel.batches(setup.train_examples, cfg)
        self.progress = Progress()
        self.ckpt_root = setup.run_dir / "checkpoints"
        self.max_time = parse_duration(cfg.train.max_time)
        self.peak = self._device_peak()
        self.peak_rechecked = False
        # Model FLOPs: what trains is fixed for the run, so the per-model part is counted once.
        self.body_flops = trained_body_flops(setup.model)
        # the vocabulary projection at each LM target; classification heads are negligible
        vocab_head = setup.objective.vocab_head
        lm_head = setup.model.heads[setup.model.family.lm_head] if vocab_head else None
        self.head_flops = vocab_head_flops(lm_head) if lm_head is not None else 0.0

    # ---- the loop -------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        """Train until a stop condition; return the final metrics."""
        cfg = self.s.config.train
        resumed = self._resume()
        if not resumed:
            # Dropout draws from the global RNG: start it from the seed whatever ran before,
            # a stream of its own on each rank.
            torch.manual_seed(streams.rank_seed(self.s.config.seed, self.parallel.info.rank))
        if resumed and self.progress.step >= cfg.max_steps:
            print(f"run already finished at step {self.progress.step}; nothing to do")
            return {}
        report = distributed.reporter(self.s.run_dir, cfg, self.progress.step)
        restore_signals = preemption.install()
        start, last_log = time.perf_counter(), time.perf_counter()
        window = _new_window()
        val: dict[str, float] = {}
        saved_at = -1
        try:
            while not self._should_stop(start):
                self._train_step(window)
                step = self.progress.step
                if step % cfg.log_every == 0 or step == cfg.max_steps:
                    seconds = time.perf_counter() - last_log - window["paused"]
                    report.log(self._train_record(window, seconds))
                    window = _new_window()
                    last_log = time.perf_counter()
                paused = time.perf_counter()
                if step % cfg.eval_every == 0:
                    val = self._evaluate_and_log(report)
                    self._track_patience(val, report)
                if step % cfg.save_every == 0:
                    with report.timed("save"):
                        self._save(val)
                    saved_at = step
                # evaluating and saving are not training: keep them out of tokens/s and MFU
                window["paused"] += time.perf_counter() - paused
            if self.progress.step != saved_at:
                if not self.preempted and (not val or val.get("step") != self.progress.step):
                    val = self._evaluate_and_log(report)
                with report.timed("save"):
                    self._save(val)
        finally:
            restore_signals()
            report.close(self._summary(val, time.perf_counter() - start))
        if self.preempted:
            preemption.stop(self.progress.step, str(self.ckpt_root / "latest"))
        return val

    def _should_stop(self, start: float) -> bool:
        t = self.s.config.train
        late = self.max_time > 0 and time.perf_counter() - start >= self.max_time
        # Clocks and signals differ per rank: agree, or one rank would wait for the others.
        late, self.preempted = distributed.any_rank(late, preemption.requested())  # save, exit
        return (
            self.progress.step >= t.max_steps
            or (t.max_tokens > 0 and self.progress.tokens >= t.max_tokens)
            or late
            or self.preempted
            or (t.patience > 0 and self.progress.evals_since_best >= t.patience)
        )

    def _track_patience(self, val: dict[str, float], report: Reporter) -> None:
        """Count evaluations since train.best_metric last improved (early stopping)."""
        value = selection.score(val, self.s.config.train.best_metric)
        if value < self.progress.eval_best:
            self.progress.eval_best, self.progress.evals_since_best = value, 0
            return
        self.progress.evals_since_best += 1
        if self.progress.evals_since_best == self.s.config.train.patience:
            report.message(
                f"early stopping: {self.s.config.train.best_metric} has not improved for "
                f"{self.progress.evals_since_best} evaluations"
            )

    def _next_micro_batches(self) -> list[Batch]:
        seed, step, rank = self.s.config.seed, self.progress.step, self.parallel.info.rank
        rngs = streams.micro_batch_rngs(seed, step, rank, self.accum)
        return [self.s.objective.prepare(next(self.batches), rng) for rng in rngs]

    def _train_step(self, window: dict) -> None:
        lr = lr_at(self.progress.step, self.s.config.optim, self.s.config.train.max_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        waited = time.perf_counter()
        micro_batches = self._next_micro_batches()
        window["wait"] += time.perf_counter() - waited
        step_loss, step_tokens, step_flops = self.accumulate_gradients(micro_batches)
        step_tokens, step_flops = distributed.global_counts(step_tokens, step_flops)
        self._optimizer_step()
        self.progress.step += 1
        self.progress.tokens += step_tokens
        window["tokens"] += step_tokens
        window["flops"] += step_flops
        window["loss"] = window["loss"] + step_loss.cpu()
        window["steps"] += 1

    def accumulate_gradients(self, micro_batches: list[Batch]) -> tuple[Tensor, int, float]:
        """Backward every micro-batch with each loss term divided by the step's total count.

        Returns the step's loss (a tensor: no device sync), input tokens and model FLOPs.
        """
        objective, device = self.s.objective, self.s.runtime.device
        batch_counts = [objective.count(batch) for batch in micro_batches]
        counts = _total_counts(batch_counts)
        step_loss, step_tokens, step_flops = torch.zeros((), device=device), 0, 0.0
        for i, batch in enumerate(micro_batches):
            step_flops += self._flops(batch, batch_counts[i])
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
        clip = self.s.config.optim.grad_clip or math.inf
        params = [p for p in self.model.parameters() if p.requires_grad]
        # Gradients are already reduced across ranks, so every rank sees the same norm.
        norm = self.parallel.clip_grad_norm(params, clip)
        if not torch.isfinite(norm):
            preemption.skip_nonfinite(self.s.config.train.on_nonfinite, self.progress)
            self.optimizer.zero_grad(set_to_none=True)  # skipped: the parameters never see NaN
            return
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _flops(self, batch: Batch, counts: dict[str, Tensor]) -> float:
        width = batch["input_ids"].shape[1]  # task batches are cut to their longest row
        body = batch["input_ids"].numel() * self.body_flops.at(width)
        return body + float(counts.get(self.s.objective.lm_term, 0)) * self.head_flops

    def _device_peak(self, achieved: float = 0.0) -> float | None:
        """Peak FLOP/s of all ranks together (see flops.device_peak_flops)."""
        world, runtime = self.parallel.info.world_size, self.s.runtime
        per_device = device_peak_flops(
            runtime.device, runtime.precision, self.s.cache_dir, achieved / world
        )
        return world * per_device if per_device else None

    def _train_record(self, window: dict, seconds: float) -> dict:
        flops_per_s = window["flops"] / max(seconds, 1e-9)
        if self.peak and flops_per_s > self.peak and not self.peak_rechecked:
            self.peak_rechecked = True  # once per run: the new figure is the best we can do
            self.peak = self._device_peak(achieved=flops_per_s)
        return {
            "step": self.progress.step,
            "loss": float(distributed.all_sum(window["loss"])) / max(1, window["steps"]),
            "lr": self.optimizer.param_groups[0]["lr"],
            "tokens": self.progress.tokens,
            "tokens_per_s": window["tokens"] / max(seconds, 1e-9),
            "tflops_per_s": flops_per_s / 1e12,
            "mfu": flops_per_s / self.peak if self.peak else None,
            "data_wait_share": window["wait"] / max(seconds, 1e-9),
            # objective statistics, e.g. PPO's mean reward, KL and response length
            **self.s.objective.train_metrics(),
        }

    # ---- evaluation -------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Validation metrics of the current model (see train/evaluation.py)."""
        self.model.eval()
        try:
            return evaluation.validation_metrics(
                self.parallel.losses,
                self.s.objective,
                self.s.val_examples,
                self.s.config,
                self.s.runtime,
            )
        finally:
            self.model.train()

    def _evaluate_and_log(self, report: Reporter) -> dict[str, float]:
        with report.timed("eval"):
            metrics = {"step": self.progress.step, **self.evaluate()}
        report.log(metrics)
        return metrics

    # ---- checkpoints ------------------------------------------------------------------------
    def _save(self, val: dict[str, float]) -> None:
        weights = self.parallel.model_weights(self.s.trainable_only)
        metric = self.s.config.train.best_metric
        current = val.get("step") == self.progress.step
        value = selection.score(val, metric) if current else None
        if value is not None and value < self.progress.best_val_loss:
            self.progress.best_val_loss, self.progress.best_step = value, self.progress.step
        train_state = {
            "progress": vars(self.progress).copy(),
            "optimizer": self.parallel.optimizer_state(self.optimizer),
            "data": self.parallel.data_state(self.batches),
            "rng": streams.saved_rng(),  # a collective: every rank takes part
        }
        if not self.parallel.is_main:
            distributed.barrier()  # rank 0 writes alone; no rank exits before it is done
            return
        contents = checkpoint.CheckpointContents(
            config_yaml=to_yaml(self.s.config),
            tokenizer_json=self.s.tokenizer_json,
            train_state=train_state,
            meta={**self.s.meta, "metrics": {k: v for k, v in val.items() if k != "step"}},
        )
        step_dir = checkpoint.save(self.ckpt_root, self.progress.step, weights, contents)
        if self.progress.best_step == self.progress.step:
            checkpoint.mark_best(self.ckpt_root, step_dir)
        checkpoint.prune(self.ckpt_root, self.s.config.checkpoint.keep_last)
        distributed.barrier()

    def _resume(self) -> bool:
        """Continue from a checkpoint when checkpoint.resume asks for one; True if resumed."""
        step_dir = resume_dir(self.ckpt_root, self.s.config.checkpoint)
        if step_dir is None:
            return False
        check_resumable(step_dir, self.s.config, self.s.tokenizer_json)
        weights = checkpoint.load_weights(step_dir)
        self.parallel.load_weights(weights, step_dir, self.s.trainable_only)
        state = checkpoint.load_train_state(step_dir)
        try:
            self.parallel.load_optimizer_state(self.optimizer, state["optimizer"])
            self.batches.load_state_dict(self.parallel.data_position(state["data"]))
            self.progress = Progress(**state["progress"])
            streams.restore_rank_rng(state["rng"], self.s.config.seed, self.progress.step)
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
            raise CheckpointError(
                f"{step_dir / checkpoint.TRAIN_STATE}: does not fit this run "
                f"({type(exc).__name__}: {str(exc).strip()[:120]}); it is corrupt"
            ) from None
        print(f"resumed from {step_dir} (step {self.progress.step})")
        return True

    def _summary(self, val: dict[str, float], seconds: float) -> dict:
        summary = {
            "steps": self.progress.step,
            "tokens": self.progress.tokens,
            "wall time (s)": round(seconds, 1),
        }
        summary.update({k: v for k, v in val.items() if k != "step"})
        if self.progress.best_step >= 0:
            summary["best step"] = self.progress.best_step
        summary["run dir"] = str(self.s.run_dir)
        return summary


def _new_window() -> dict:
    return {
        "loss": torch.zeros(()),
        "steps": 0,
        "tokens": 0,
        "flops": 0.0,
        "wait": 0.0,
        "paused": 0.0,
    }


def _total_counts(batch_counts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Targets per loss term over the whole step and all ranks (at least 1: empty adds 0)."""
    totals: dict[str, Tensor] = {}
    for counts in batch_counts:
        for name, n in counts.items():
            totals[name] = totals.get(name, 0) + n
    totals = distributed.sum_counts(totals)  # over ranks: every rank divides by the global count
    return {name: n.clamp(min=1).float() for name, n in totals.items()}
