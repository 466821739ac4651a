"""The end of a sweep (`-m`): a Hydra callback that tabulates each run's final metrics, prints
the table and writes it to the sweep directory as summary.md and summary.json."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

SUMMARY_MD, SUMMARY_JSON = "summary.md", "summary.json"


def final_metrics(run_dir: Path) -> dict[str, Any]:
    """The last train record merged with the last evaluation of a run's metrics.jsonl."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return {}
    train: dict[str, Any] = {}
    evaluation: dict[str, Any] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a killed run
            continue
        if "loss" in record:
            train = record
        elif "val_loss" in record:
            evaluation = record
    merged = {k: train[k] for k in ("step", "loss", "tokens") if k in train}
    merged.update({k: v for k, v in evaluation.items() if k.startswith("val_")})
    return merged


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    """step, loss, val_loss, then the other validation metrics (not per-term losses)."""
    seen = {k for row in rows for k in row["metrics"]}
    extra = sorted(
        k for k in seen if k.startswith("val_") and not k.endswith("_loss") and k != "val_loss"
    )
    return [k for k in ("step", "loss", "val_loss") if k in seen] + extra


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return "-" if value is None else str(value)


def _job_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for overrides_file in sweep_dir.glob("**/.hydra/overrides.yaml"):
        job_dir = overrides_file.parent.parent
        overrides = [str(o) for o in OmegaConf.load(overrides_file)]
        metrics = final_metrics(job_dir)
        rows.append({"dir": str(job_dir), "overrides": overrides, "metrics": metrics})
    rows.sort(key=lambda r: (len(r["dir"]), r["dir"]))  # 0, 1, ..., 10 in numeric order
    return rows


def summary_table(sweep_dir: Path) -> tuple[str, list[dict[str, Any]]]:
    """A markdown table of the runs under sweep_dir: varying overrides, then final metrics."""
    rows = _job_rows(sweep_dir)
    shared = set.intersection(*(set(r["overrides"]) for r in rows)) if rows else set()
    columns = _columns(rows)
    header = ["run", "overrides", "status", *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        varying = " ".join(o for o in row["overrides"] if o not in shared) or "-"
        status = "ok" if row["metrics"] else "no metrics (failed?)"
        cells = [Path(row["dir"]).name, varying, status]
        cells += [_fmt(row["metrics"].get(c)) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n", rows


class SweepSummary(Callback):
    """Registered in configs/hydra/callbacks/sweep_summary.yaml; acts at the end of `-m` runs."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        table, rows = summary_table(sweep_dir)
        (sweep_dir / SUMMARY_MD).write_text(table)
        (sweep_dir / SUMMARY_JSON).write_text(json.dumps(rows, indent=2) + "\n")
        print(f"\nsweep summary ({len(rows)} runs, also in {sweep_dir / SUMMARY_MD}):\n{table}")
