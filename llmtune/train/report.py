"""What a run tells the user: a rich progress bar (or plain lines off a terminal),
metrics.jsonl, optional TensorBoard events, and a summary table at the end."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

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


class Reporter:
    """Writes every logged record to metrics.jsonl and shows progress on the console."""

    def __init__(self, run_dir: Path, max_steps: int, start_step: int) -> None:
        self.console = Console(highlight=False)
        self.metrics_file = (run_dir / "metrics.jsonl").open("a")
        self.tensorboard = _tensorboard_writer(run_dir)
        self.live = self.console.is_terminal
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[stats]}"),
            console=self.console,
            disable=not self.live,
        )
        self.task = self.progress.add_task("train", total=max_steps, completed=start_step, stats="")
        self.progress.start()

    def message(self, text: str) -> None:
        self.console.print(text)

    def log(self, record: dict[str, Any]) -> None:
        """Record one metrics row (train or eval) and update the display."""
        self.metrics_file.write(json.dumps(record) + "\n")
        self.metrics_file.flush()
        if self.tensorboard is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                    self.tensorboard.add_scalar(key, value, record["step"])
        if "loss" in record:
            stats = (
                f"loss {record['loss']:.4f}  lr {record['lr']:.2e}  "
                f"{record['tokens_per_s']:,.0f} tok/s  MFU {_fmt_pct(record.get('mfu'))}"
            )
            stats += "".join(f"  {k} {_fmt(v)}" for k, v in record.items() if k not in _TRAIN_KEYS)
            self.progress.update(self.task, completed=record["step"], stats=stats)
            if not self.live:
                self.console.print(f"step {record['step']}  {stats}")
        else:
            shown = "  ".join(
                f"{k.removeprefix('val_')} {_fmt(v)}" for k, v in record.items() if _shown(k)
            )
            self.console.print(f"eval step {record['step']}  {shown}")

    def close(self, summary: dict[str, Any]) -> None:
        self.progress.stop()
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
