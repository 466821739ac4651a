"""The figures of `llmtune report`, drawn with matplotlib: curves against step (one run, or
several overlaid), the best checkpoint marked, and a classifier's confusion matrix."""

from __future__ import annotations

import functools
import io
import math
from typing import Any

from llmtune.errors import UserError
from llmtune.plots.runs import Run

# a colour-blind-safe cycle (Okabe-Ito), distinct enough for a dozen runs with line styles
COLOURS = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
STYLES = ["-", "--", ":", "-."]

# curves of the train records: key -> (title, y label, log scale)
TRAIN_CURVES = {
    "loss": ("training loss", "loss", False),
    "lr": ("learning rate", "lr", False),
    "tokens_per_s": ("throughput", "tokens/s", False),
    "mfu": ("model FLOPs utilisation", "MFU", False),
}


class PlotError(UserError):
    """`llmtune report` needs matplotlib (the report extra)."""


@functools.cache
def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend, with the report's look."""
    try:
        import matplotlib
    except ImportError:
        raise PlotError("llmtune report needs matplotlib: pip install 'llmtune[report]'") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "figure.dpi": 110,
            "savefig.dpi": 150,
            "font.size": 9,
            "axes.titlesize": 10,
            "axes.titleweight": "bold",
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "legend.frameon": False,
            "legend.fontsize": 8,
        }
    )
    return plt


def png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    pyplot().close(fig)
    return buffer.getvalue()


def val_metrics(runs: list[Run]) -> list[str]:
    """Validation metrics worth a curve: val_loss first, then the others in name order; a
    metric that repeats another (val_accuracy = val_clm_accuracy) is drawn once, shortest name."""
    keys = {k for run in runs for record in run.evals for k in record if k.startswith("val_")}
    keys = {k for k in keys if "/" not in k}  # per-type breakdowns stay in metrics.jsonl
    kept: dict[tuple, str] = {}
    for key in sorted(keys, key=lambda k: (k != "val_loss", len(k), k)):
        series = tuple(tuple(_series(run.evals, key)[1]) for run in runs)
        kept.setdefault(series, key)
    chosen = set(kept.values())
    return ["val_loss"] * ("val_loss" in chosen) + sorted(chosen - {"val_loss"})


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [
        (r["step"], float(r[key]))
        for r in records
        if isinstance(r.get(key), int | float) and math.isfinite(float(r[key]))
    ]
    return [p[0] for p in points], [p[1] for p in points]


def _mark_best(ax: Any, run: Run, key: str, colour: str) -> None:
    """The best checkpoint: a dotted vertical line, and a star on this metric's curve."""
    if run.best_step is None:
        return
    ax.axvline(run.best_step, color=colour, linestyle=":", linewidth=1, alpha=0.7)
    for record in run.evals:
        if record["step"] == run.best_step and isinstance(record.get(key), int | float):
            ax.plot([run.best_step], [record[key]], marker="*", markersize=11, color=colour)


def curve(runs: list[Run], key: str, title: str, ylabel: str) -> bytes | None:
    """One metric against step for each run that has it; None when no run has it."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.2), layout="constrained")
    drawn = 0
    for i, run in enumerate(runs):
        records = run.evals if key.startswith("val_") else run.train
        steps, values = _series(records, key)
        if not steps:
            continue
        colour, style = COLOURS[i % len(COLOURS)], STYLES[(i // len(COLOURS)) % len(STYLES)]
        marker = "o" if len(steps) <= 30 and key.startswith("val_") else None
        ax.plot(steps, values, style, color=colour, marker=marker, markersize=3, label=run.label)
        if key == "loss" and len(runs) == 1:  # the validation loss beside the training loss
            vsteps, vvalues = _series(run.evals, "val_loss")
            ax.plot(vsteps, vvalues, "--", color=COLOURS[3], marker="o", markersize=3)
            ax.lines[-1].set_label("validation loss")
            ax.lines[-2].set_label("training loss")
            _mark_best(ax, run, "val_loss", COLOURS[3])
        elif key.startswith("val_"):
            _mark_best(ax, run, key, colour)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    if key == "mfu":
        from matplotlib.ticker import PercentFormatter

        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    elif key == "lr":
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax.xaxis.set_major_locator(pyplot().MaxNLocator(integer=True))
    ax.set(title=title, xlabel="step", ylabel=ylabel)
    if len(runs) > 6:  # many runs: the legend beside the axes, not over the curves
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    elif len(runs) > 1 or key == "loss":
        ax.legend(loc="best")
    return png(fig)


def confusion(results: dict[str, Any], title: str) -> bytes | None:
    """A classifier's confusion matrix (rows true, columns predicted) as a heatmap."""
    matrix = (results.get("confusion_matrix") or {}).get("matrix")
    labels = (results.get("confusion_matrix") or {}).get("labels")
    if not matrix or not labels:
        return None
    plt = pyplot()
    n = len(labels)
    side = min(9.0, 2.4 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(side + 1.0, side), layout="constrained")
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8, label="examples")
    ax.set_xticks(range(n), labels, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_yticks(range(n), labels)
    ax.set(title=title, xlabel="predicted", ylabel="true")
    ax.grid(False)
    peak = max(max(row) for row in matrix) or 1
    if n <= 20:  # counts in the cells while they stay legible
        for r, row in enumerate(matrix):
            for c, count in enumerate(row):
                dark = count > peak / 2
                ax.text(c, r, str(count), ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")  # fmt: skip
    return png(fig)
