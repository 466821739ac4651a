"""Run folders read back for `llmtune report`: the train and evaluation records of
metrics.jsonl, the best checkpoint, an evaluate run's results.json, and the overrides that
tell the runs of a sweep apart."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llmtune.errors import DataError

METRICS, RESULTS = "metrics.jsonl", "results.json"


@dataclass
class Run:
    """What one run folder holds; `label` tells it apart from the other runs of a page."""

    path: Path
    label: str = ""
    command: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    train: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    best_step: int | None = None
    results: dict[str, Any] | None = None

    @property
    def best_metric(self) -> str:
        return str((self.config.get("train") or {}).get("best_metric") or "val_loss")

    def final(self) -> dict[str, Any]:
        """The last train record's loss and step with the last evaluation's metrics."""
        out: dict[str, Any] = {}
        if self.train:
            out.update({k: self.train[-1][k] for k in ("step", "loss") if k in self.train[-1]})
        if self.evals:
            out.update({k: v for k, v in self.evals[-1].items() if k.startswith("val_")})
        return out


def _records(path: Path) -> tuple[list[dict], list[dict]]:
    """(train, eval) records in step order; a resumed run's repeated steps keep the newest."""
    train: dict[int, dict] = {}
    evals: dict[int, dict] = {}
    if not path.is_file():
        return [], []
    for line in path.read_text(encoding="utf-8").split("\n"):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # empty, or cut short by a killed run
            continue
        if not isinstance(record, dict) or "step" not in record:
            continue
        (train if "loss" in record else evals)[int(record["step"])] = record
    return [train[s] for s in sorted(train)], [evals[s] for s in sorted(evals)]


def _yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None


def _best_step(run_dir: Path) -> int | None:
    pointer = run_dir / "checkpoints" / "best"
    try:
        match = re.fullmatch(r"step-(\d+)", pointer.read_text().strip())
    except OSError:
        return None
    return int(match.group(1)) if match else None


def load_run(path: Path) -> Run:
    """One run folder (pretrain, finetune or evaluate), whatever it managed to write."""
    config = _yaml(path / ".hydra" / "config.yaml")
    overrides = _yaml(path / ".hydra" / "overrides.yaml")
    run = Run(path=path, config=config if isinstance(config, dict) else {})
    run.command = str(run.config.get("command") or "")
    run.overrides = [str(o) for o in overrides] if isinstance(overrides, list) else []
    run.train, run.evals = _records(path / METRICS)
    run.best_step = _best_step(path)
    if (path / RESULTS).is_file():
        try:
            run.results = json.loads((path / RESULTS).read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise DataError(f"{path / RESULTS}: not valid JSON") from None
    return run


def _is_run(path: Path) -> bool:
    return (path / METRICS).is_file() or (path / RESULTS).is_file()


def _number_first(path: Path) -> tuple:
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)


def find_runs(paths: list[str]) -> tuple[list[Run], bool]:
    """Runs of the given folders (a sweep folder gives each of its jobs); True for a sweep."""
    if not paths:
        raise DataError("no run given; use: llmtune report <run dir | sweep dir> [<dir> ...]")
    found: list[Path] = []
    sweep = False
    for text in paths:
        path = Path(text).expanduser()
        if not path.is_dir():
            raise DataError(f"runs: '{text}' is not a directory; give a run or sweep directory")
        if _is_run(path):
            found.append(path)
            continue
        jobs = sorted((p for p in path.iterdir() if p.is_dir() and _is_run(p)), key=_number_first)
        if not jobs:
            raise DataError(
                f"runs: '{text}' holds no {METRICS} or {RESULTS}, nor sub-folders that do; "
                "give a run directory (runs/<command>/<time>) or a sweep directory"
            )
        found += jobs
        sweep = True
    runs = [load_run(p) for p in dict.fromkeys(p.resolve() for p in found)]
    _label(runs)
    return runs, sweep or len(runs) > 1


LABEL_CHARS = 40  # longer override lists name a run by its folder; the table shows them all


def varying(run: Run, runs: list[Run]) -> str:
    """The overrides of `run` that not every run shares (`optim.lr=0.001`), without `++`."""
    shared = set.intersection(*(set(r.overrides) for r in runs))
    return " ".join(o.lstrip("+") for o in run.overrides if o not in shared)


def _label(runs: list[Run]) -> None:
    """A sweep job is named by the overrides that differ between runs when they are short,
    any other run by its folder (with the parent's name when two folders share a name)."""
    names = [r.path.name for r in runs]
    differ = [varying(run, runs) if len(runs) > 1 else "" for run in runs]
    by_overrides = all(0 < len(d) <= LABEL_CHARS for d in differ)  # one naming for all runs
    for run, differs in zip(runs, differ, strict=True):
        if by_overrides:
            run.label = differs
        elif names.count(run.path.name) > 1:
            run.label = f"{run.path.parent.name}/{run.path.name}"
        else:
            run.label = run.path.name
