"""What evaluate writes and shows: results.json, predictions.jsonl, generations.jsonl in the
run directory, and rich tables of the metrics, per-class/per-type scores and generations."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

RESULTS, PREDICTIONS, GENERATIONS = "results.json", "predictions.jsonl", "generations.jsonl"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e5 else f"{value:.4e}"
    return str(value)


def write_json(path: Path, values: dict[str, Any]) -> None:
    path.write_text(json.dumps(values, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def _scores_table(title: str, scores: dict[str, dict[str, float]], first: str) -> Table:
    table = Table(title=title)
    for column in (first, "precision", "recall", "f1", "support"):
        table.add_column(column, justify="left" if column == first else "right")
    for name, row in scores.items():
        table.add_row(name, *(_fmt(row[k]) for k in ("precision", "recall", "f1", "support")))
    return table


def _confusion_table(confusion: dict[str, Any]) -> Table:
    table = Table(title="confusion matrix (rows: true, columns: predicted)")
    table.add_column("true \\ pred")
    for label in confusion["labels"]:
        table.add_column(label, justify="right")
    for label, row in zip(confusion["labels"], confusion["matrix"]):
        table.add_row(label, *(str(n) for n in row))
    return table


def show_results(console: Console, title: str, results: dict[str, Any]) -> None:
    """A table of the scalar results, then per-class / per-type tables when present."""
    table = Table(title=title, show_header=False)
    for key, value in results.items():
        if not isinstance(value, dict | list):
            table.add_row(key, _fmt(value))
    console.print(table)
    if "per_class" in results:
        console.print(_scores_table("per class", results["per_class"], "label"))
    if "confusion_matrix" in results and len(results["confusion_matrix"]["labels"]) <= 20:
        console.print(_confusion_table(results["confusion_matrix"]))
    if "per_type" in results:
        console.print(_scores_table("entities per type", results["per_type"], "type"))


def show_generations(console: Console, rows: list[dict[str, Any]], limit: int = 20) -> None:
    table = Table(title=f"generations ({min(limit, len(rows))} of {len(rows)})", show_lines=True)
    table.add_column("prompt", overflow="fold")
    table.add_column("completion", overflow="fold")
    table.add_column("tokens", justify="right")
    table.add_column("stop")
    for row in rows[:limit]:
        table.add_row(row["prompt"], row["completion"], str(row["new_tokens"]), row["stop"])
    console.print(table)
