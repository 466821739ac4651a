"""The run's checkpoints as the loop sees them: save the model, optimizer, data position, RNG
and progress into <run>/checkpoints (rank 0 writes; best and pruning follow), and resume from
the step folder checkpoint.resume names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmtune import checkpoint
from llmtune.config.load import to_yaml
from llmtune.config.schema import RunConfig
from llmtune.errors import CheckpointError
from llmtune.train import distributed, selection, streams
from llmtune.train.parallel import Parallel
from llmtune.train.progress import Progress
from llmtune.train.resume import check_resumable, resume_dir


@dataclass(frozen=True)
class RunFiles:
    """What every checkpoint of the run holds besides its state."""

    tokenizer_json: str
    meta: dict  # extra fields for meta.json (e.g. heads)
    trainable_only: bool  # adapter runs: checkpoints hold only the trained weights


class RunCheckpoints:
    """Saves and restores everything a resumed run needs to continue exactly."""

    def __init__(
        self,
        config: RunConfig,
        parallel: Parallel,
        optimizer: torch.optim.Optimizer,
        batches: Any,  # the data stream (state_dict/load_state_dict)
        run_dir: Path,
        files: RunFiles,
    ) -> None:
        self.config, self.parallel, self.optimizer = config, parallel, optimizer
        self.batches, self.files = batches, files
        self.root = run_dir / "checkpoints"

    def save(self, progress: Progress, val: dict[str, float]) -> None:
        """Save at progress.step; `val` (this step's metrics, if evaluated) may make it best."""
        weights = self.parallel.model_weights(self.files.trainable_only)
        current = val.get("step") == progress.step
        value = selection.score(val, self.config.train.best_metric) if current else None
        if value is not None and value < progress.best_val_loss:
            progress.best_val_loss, progress.best_step = value, progress.step
        train_state = {
            "progress": vars(progress).copy(),
            "optimizer": self.parallel.optimizer_state(self.optimizer),
            "data": self.parallel.data_state(self.batches),
            "rng": streams.saved_rng(),  # a collective: every rank takes part
        }
        if not self.parallel.is_main:
            distributed.barrier()  # rank 0 writes alone; no rank exits before it is done
            return
        saved = checkpoint.CheckpointContents(
            config_yaml=to_yaml(self.config),
            tokenizer_json=self.files.tokenizer_json,
            train_state=train_state,
            meta={**self.files.meta, "metrics": {k: v for k, v in val.items() if k != "step"}},
        )
        step_dir = checkpoint.save(self.root, progress.step, weights, saved)
        if progress.best_step == progress.step:
            checkpoint.mark_best(self.root, step_dir)
        checkpoint.prune(self.root, self.config.checkpoint.keep_last)
        distributed.barrier()

    def resume(self) -> Progress | None:
        """The progress of the checkpoint resumed from (model, optimizer, data and RNG
        restored), or None when checkpoint.resume starts afresh."""
        step_dir = resume_dir(self.root, self.config.checkpoint)
        if step_dir is None:
            return None
        check_resumable(step_dir, self.config, self.files.tokenizer_json)
        weights = checkpoint.load_weights(step_dir)
        self.parallel.load_weights(weights, step_dir, self.files.trainable_only)
        state = checkpoint.load_train_state(step_dir)
        try:
            self.parallel.load_optimizer_state(self.optimizer, state["optimizer"])
            self.batches.load_state_dict(self.parallel.data_position(state["data"]))
            progress = Progress(**state["progress"])
            streams.restore_rank_rng(state["rng"], self.config.seed, progress.step)
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
            raise CheckpointError(
                f"{step_dir / checkpoint.TRAIN_STATE}: does not fit this run "
                f"({type(exc).__name__}: {str(exc).strip()[:120]}); it is corrupt"
            ) from None
        print(f"resumed from {step_dir} (step {progress.step})")
        return progress
