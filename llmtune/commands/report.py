"""`llmtune report <dir> ...`: run, sweep or evaluate folders -> one HTML page with curves,
the best checkpoints, a sortable table of runs and evaluation results, plus PNG files."""

from __future__ import annotations

import html
from pathlib import Path

from llmtune.config.schema import RunConfig
from llmtune.console import console
from llmtune.plots import figures
from llmtune.plots.page import PAGE, Page, document, evaluation, runs_table, summary_cards
from llmtune.plots.runs import Run, find_runs


def runs_override(args: list[str]) -> list[str]:
    """`llmtune report a b` -> the override `runs=['a','b']` (other arguments pass through)."""
    bare = [a for a in args if "=" not in a and not a.startswith("-")]
    if not bare:
        return args
    quoted = ",".join("'" + a.replace("\\", "\\\\").replace("'", "\\'") + "'" for a in bare)
    return [a for a in args if a not in bare] + [f"runs=[{quoted}]"]


def _curves(page: Page, runs: list[Run]) -> str:
    """Training curves, then one figure per validation metric."""
    metrics = figures.val_metrics(runs)
    shown = [
        page.figure(key, figures.curve(runs, key, title, ylabel))
        for key, (title, ylabel, _) in figures.TRAIN_CURVES.items()
    ]
    shown[1:1] = [
        page.figure(key, figures.curve(runs, key, f"validation {key[4:]}", key))
        for key in metrics
        if not (key == "val_loss" and len(runs) == 1)  # drawn beside the training loss
    ]
    return f'<div class="grid">{"".join(shown)}</div>' if any(shown) else ""


def _body(page: Page, runs: list[Run], several: bool) -> str:
    trained = [r for r in runs if r.train or r.evals]
    evaluated = [r for r in runs if r.results]
    parts = []
    if several:
        metrics = figures.val_metrics(trained)
        parts += ["<h2>Runs</h2>", '<p class="sub">click a column to sort by it</p>']
        parts.append(runs_table(runs, metrics))
    elif trained:
        parts.append(summary_cards(trained[0]))
    if trained:
        title = "Curves of all runs" if several else "Curves"
        note = (
            " (★ and dotted line: the best checkpoint)" if any(r.best_step for r in trained) else ""
        )
        parts += [f"<h2>{title}</h2>", f'<p class="sub">against training step{note}</p>']
        parts.append(_curves(page, trained))
    if evaluated:
        parts.append("<h2>Evaluations</h2>")
        parts += [evaluation(page, r) for r in evaluated]
    return "".join(parts)


def _subtitle(runs: list[Run]) -> str:
    if len(runs) == 1:
        return f"<code>{html.escape(str(runs[0].path))}</code>"
    return f"{len(runs)} runs"


def run(config: RunConfig, run_dir: Path) -> None:
    runs, several = find_runs(list(config.runs))
    figures.pyplot()  # a missing matplotlib stops here, before anything is written
    run_dir.mkdir(parents=True, exist_ok=True)
    page = Page(run_dir)
    title = "llmtune report" if several else f"llmtune report: {runs[0].label}"
    (run_dir / PAGE).write_text(document(title, _subtitle(runs), _body(page, runs, several)))
    out = console()
    out.print(f"report of {len(runs)} run(s): {run_dir / PAGE} ({len(page.pngs)} figures)")
    out.print(f"open it: file://{(run_dir / PAGE).resolve()}", soft_wrap=True)
