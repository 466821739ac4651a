"""The `llmtune report` page: one self-contained HTML file (figures inlined as PNG data, a
table of runs sortable by any metric with a click) plus each figure as its own PNG file."""

from __future__ import annotations

import base64
import datetime
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtune.plots import figures
from llmtune.plots.runs import Run, varying

PAGE = "report.html"

_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
 color:#1f2328;background:#f6f8fa}
main{max-width:1240px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 10px;
 border-bottom:1px solid #d0d7de;padding-bottom:4px}h3{font-size:14px;margin:16px 0 6px}
.sub{color:#59636e;margin:0 0 8px}code{font-size:12px;background:#eef1f4;padding:1px 4px;
 border-radius:4px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:14px}
figure{margin:0;background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:8px}
figure img{width:100%;height:auto;display:block}
figure.heatmap img{max-width:460px;margin:0 auto}
table{border-collapse:collapse;background:#fff;border:1px solid #d0d7de;font-size:13px}
th,td{padding:5px 10px;border-bottom:1px solid #eaeef2;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}
td.wrap{white-space:normal;text-align:left;min-width:260px;font-size:12px;color:#59636e}
th{background:#f0f3f6;position:sticky;top:0}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th:hover{background:#e2e8ee}
th.asc::after{content:" \\25B2";font-size:10px}th.desc::after{content:" \\25BC";font-size:10px}
tr.best td{background:#eaf6ec;font-weight:600}
.scroll{overflow-x:auto;max-width:100%}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:8px 0}
.card{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:8px 14px}
.card b{display:block;font-size:18px}.card span{color:#59636e;font-size:12px}
"""

# Click a header to sort by that column; numbers compare as numbers, missing values sort last.
_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function(table){
 table.querySelectorAll("th").forEach(function(th,col){
  th.addEventListener("click",function(){
   var desc=th.classList.contains("asc");
   table.querySelectorAll("th").forEach(function(h){h.classList.remove("asc","desc")});
   th.classList.add(desc?"desc":"asc");
   var body=table.tBodies[0],rows=Array.from(body.rows);
   rows.sort(function(a,b){
    var x=a.cells[col].dataset.v,y=b.cells[col].dataset.v;
    if(x===y)return 0;if(x==="")return 1;if(y==="")return -1;
    var nx=parseFloat(x),ny=parseFloat(y),c=(isNaN(nx)||isNaN(ny))?x.localeCompare(y):nx-ny;
    return desc?-c:c;});
   rows.forEach(function(r){body.appendChild(r)});});});});
// report.html#sort=val_loss opens sorted by that column (#sort=-val_loss: descending)
var want=decodeURIComponent((location.hash.match(/sort=([^&]+)/)||[])[1]||"");
document.querySelectorAll("table.sortable th").forEach(function(th){
 if(want&&th.textContent===want.replace(/^-/,"")){th.click();if(want[0]==="-")th.click();}});
"""


@dataclass
class Page:
    """The page being assembled: HTML parts and the PNG files written beside it."""

    out_dir: Path
    parts: list[str] = field(default_factory=list)
    pngs: list[Path] = field(default_factory=list)

    def figure(self, name: str, data: bytes | None, css: str = "") -> str:
        if data is None:
            return ""
        path = self.out_dir / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
        path.write_bytes(data)
        self.pngs.append(path)
        encoded = base64.b64encode(data).decode()
        alt = html.escape(name)
        image = f'<img alt="{alt}" src="data:image/png;base64,{encoded}">'
        return f'<figure class="{css}">{image}</figure>'


def _fmt(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return "-" if value is None else str(value)


def _cell(value: Any) -> str:
    sort_key = "" if value is None else html.escape(str(value))
    return f'<td data-v="{sort_key}">{html.escape(_fmt(value))}</td>'


def _best_value(run: Run) -> Any:
    for record in run.evals:
        if record["step"] == run.best_step:
            return record.get(run.best_metric)
    return None


def runs_table(runs: list[Run], metrics: list[str]) -> str:
    """One row per run: final step and loss, last validation metrics, the best checkpoint."""
    columns = ["run", "command", "step", "loss", *metrics, "best step", "best by", "best value"]
    columns.append("overrides")
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    rows = []
    for run in runs:
        final = run.final()
        values = [run.label, run.command or None, final.get("step"), final.get("loss")]
        values += [final.get(m) for m in metrics]
        values += [run.best_step, run.best_metric if run.best_step is not None else None]
        values.append(_best_value(run))
        overrides = f'<td class="wrap">{html.escape(varying(run, runs) or "-")}</td>'
        rows.append("<tr>" + "".join(_cell(v) for v in values) + overrides + "</tr>")
    return (
        '<div class="scroll"><table class="sortable"><thead><tr>'
        + head
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></div>"
    )


def summary_cards(run: Run) -> str:
    """A single run at a glance: steps, tokens, final losses, the best checkpoint."""
    final = run.final()
    last = run.train[-1] if run.train else {}
    values = {
        "command": run.command or None,
        "steps": final.get("step"),
        "tokens": last.get("tokens"),
        "final training loss": final.get("loss"),
        "final validation loss": final.get("val_loss"),
        "best step": run.best_step,
        f"best {run.best_metric}": _best_value(run),
    }
    return _scalars({k: v for k, v in values.items() if v is not None}, text=True)


def _scalars(results: dict[str, Any], text: bool = False) -> str:
    cards = [
        f'<div class="card"><b>{html.escape(_fmt(v))}</b><span>{html.escape(k)}</span></div>'
        for k, v in results.items()
        if (text and isinstance(v, str)) or (isinstance(v, int | float) and not isinstance(v, bool))
    ]
    return f'<div class="cards">{"".join(cards)}</div>'


def _scores(title: str, scores: dict[str, dict[str, Any]]) -> str:
    columns = ["", "precision", "recall", "f1", "support"]
    head = "".join(f"<th>{c}</th>" for c in columns)
    rows = "".join(
        f"<tr><td>{html.escape(str(name))}</td>"
        + "".join(_cell(row.get(c)) for c in columns[1:])
        + "</tr>"
        for name, row in scores.items()
    )
    return f"<h3>{title}</h3><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def evaluation(page: Page, run: Run) -> str:
    """An evaluate run's results: headline numbers, per-class scores, the confusion matrix."""
    results = run.results or {}
    ckpt = results.get("ckpt") or run.config.get("ckpt")
    parts = [f"<h3>{html.escape(run.label)}</h3>"]
    if ckpt:
        parts.append(f'<p class="sub">checkpoint <code>{html.escape(str(ckpt))}</code></p>')
    parts.append(_scalars(results))
    heatmap = figures.confusion(results, f"confusion matrix: {run.label}")
    tables = ""
    if isinstance(results.get("per_class"), dict):
        tables += _scores("per class", results["per_class"])
    if isinstance(results.get("per_type"), dict):
        tables += _scores("entities per type", results["per_type"])
    if heatmap or tables:
        figure = page.figure(f"confusion-{run.label}", heatmap, css="heatmap")
        parts.append(f'<div class="grid"><div class="scroll">{tables}</div>{figure}</div>')
    return "".join(parts)


def document(title: str, subtitle: str, body: str) -> str:
    generated = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body><main>"
        f"<h1>{html.escape(title)}</h1>"
        f'<p class="sub">{subtitle} · generated by llmtune report on {generated}</p>'
        f"{body}</main><script>{_SCRIPT}</script></body></html>\n"
    )
