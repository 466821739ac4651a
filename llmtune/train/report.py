"""What a run tells the user: on a terminal one live progress bar (step/total, percent, loss,
tokens/s, MFU, elapsed time and an ETA that counts evaluations and checkpoints), elsewhere
plain unwrapped lines; metrics.jsonl, optional TensorBoard events, and a summary table."""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from llmtune import runlog
from llmtune.config.schema import TrainConfig
from llmtune.console import clock, console, live_console
from llmtune.train.eta import Eta
from llmtune.train.selection import ALIASES

# the loop's own train-record keys; any other key is an objective's statistic (PPO's reward)
_TRAIN_KEYS = ("step", "loss", "lr", "tokens", "tokens_per_s", "tflops_per_s", "mfu")
_TRAIN_KEYS += ("data_wait_share",)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3e}"
        return f"{value:.4f}"
    return str(value)


class _EtaColumn(ProgressColumn):
    """Counts down between log steps from the last estimate (`deadline`, a monotonic time)."""

    def render(self, task: Any) -> Text:
        deadline = task.fields.get("deadline")
        if deadline is None:
            return Text("ETA --", style="progress.remaining")
        return Text(f"ETA {clock(max(0.0, deadline - time.monotonic()))}", "progress.remaining")


class Reporter:
    """Writes every logged record to metrics.jsonl and shows progress on the console."""

    def __init__(self, run_dir: Path, train: TrainConfig, start_step: int) -> None:
        self.console = console()
        self.metrics_file = (run_dir / "metrics.jsonl").open("a")
        self.tensorboard = _tensorboard_writer(run_dir)
        self.max_steps = train.max_steps
        self.eta = Eta(train)
        self.last = {"step": start_step, "time": time.monotonic(), "paused": 0.0}
        self.live = self.console.is_terminal
        self.progress: Progress | None = None
        self._live_scope = contextlib.ExitStack()
        if self.live:
            shown = live_console()
            self.progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(bar_width=24),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TimeElapsedColumn(),
                _EtaColumn(),
                TextColumn("{task.fields[stats]}"),
                console=shown,
                redirect_stdout=False,  # runlog.live routes print() above the bar and to the log
                redirect_stderr=False,
            )
            self.task = self.progress.add_task("train", total=train.max_steps, stats="")
            self.progress.update(self.task, completed=start_step)
            self._live_scope.enter_context(runlog.live(shown))
            self.progress.start()

    def message(self, text: str) -> None:
        self.console.print(text, soft_wrap=True)

    @contextlib.contextmanager
    def timed(self, kind: str) -> Iterator[None]:
        """Time an evaluation or a checkpoint ("eval", "save"): the ETA counts those still due."""
        start = time.monotonic()
        try:
            yield
        finally:
            seconds = time.monotonic() - start
            self.eta.observe(kind, seconds)
            self.last["paused"] += seconds

    def log(self, record: dict[str, Any]) -> None:
        """Record one metrics row (train or eval) and update the display."""
        self.metrics_file.write(json.dumps(record) + "\n")
        self.metrics_file.flush()
        if self.tensorboard is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                    self.tensorboard.add_scalar(key, value, record["step"])
        if "loss" in record:
            self._show_train(record)
        else:
            shown = "  ".join(
                f"{k.removeprefix('val_')} {_fmt(v)}" for k, v in record.items() if _shown(k)
            )
            self.message(f"eval step {record['step']}/{self.max_steps}  {shown}")

    def _show_train(self, record: dict[str, Any]) -> None:
        now, step = time.monotonic(), record["step"]
        trained = now - self.last["time"] - self.last["paused"]
        steps = step - self.last["step"]
        tokens_per_step = record["tokens_per_s"] * max(trained, 1e-9) / max(steps, 1)
        self.eta.observe_steps(steps, trained, round(tokens_per_step * steps))
        self.last = {"step": step, "time": now, "paused": 0.0}
        remaining = self.eta.remaining(step, record["tokens"])
        total = self.eta.end_step(step, record["tokens"])  # train.max_tokens may end it early
        stats = (
            f"loss {record['loss']:.4f}  {record['tokens_per_s']:,.0f} tok/s  "
            f"MFU {_fmt_pct(record.get('mfu'))}"
        )
        extra = "".join(f"  {k} {_fmt(v)}" for k, v in record.items() if k not in _TRAIN_KEYS)
        pct = 100 * step / max(1, total)
        line = (
            f"step {step}/{total} ({pct:.0f}%)  loss {record['loss']:.4f}  "
            f"lr {record['lr']:.2e}  {record['tokens_per_s']:,.0f} tok/s  "
            f"MFU {_fmt_pct(record.get('mfu'))}{extra}  "
            f"elapsed {clock(now - self.eta.started)}  "
            f"ETA {'--' if remaining is None else clock(remaining)}"
        )
        if self.progress is None:
            self.message(line)
            return
        deadline = None if remaining is None else now + remaining
        self.progress.update(
            self.task, completed=step, total=total, stats=stats + extra, deadline=deadline
        )
        runlog.log_only(line)  # the log keeps the plain line the bar stands for

    def close(self, summary: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress.stop()
        self._live_scope.close()
        self.metrics_file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        table = Table(title="run summary", show_header=False)
        for key, value in summary.items():
            table.add_row(key, _fmt(value))
        self.console.print(table)


def _shown(key: str) -> bool:
    """Keys of the one-line eval display: per-term losses, aliases of another key and
    per-type breakdowns ("entity_f1/PER") stay in metrics.jsonl and the summary only."""
    if key == "val_loss":
        return True
    return not (key == "step" or key.endswith("_loss") or key in ALIASES or "/" in key)


def _fmt_pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _tensorboard_writer(run_dir: Path):
    """A SummaryWriter when the optional tensorboard extra is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))
