"""Multi-task training (`multitask`): several objectives, each on its own data, in one run
and one checkpoint. Rows of all tasks are shuffled together; every micro-batch runs each
task present in it, and each task's terms keep their own names and global counts.

A task's weight multiplies its summed loss in training only, so the loop's per-term
normalisation (divide by the step's global count) gives exactly sum_t w_t * mean_t under
any accumulation; validation reports the unweighted per-task losses and accuracies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from llmtune.config.schema import ObjectiveConfig, RunConfig
from llmtune.data import to_tensors
from llmtune.errors import ConfigError
from llmtune.models.family import Kind
from llmtune.models.registry import names_of_kind
from llmtune.objectives.base import Batch, Objective, ObjectiveBase, TermResult
from llmtune.objectives.entry import ANY_KIND, Built, Context, ObjectiveEntry, Scoring

SEP = "/"  # examples keys are "<task>/<key>", plus "task" (the row's task index)
LABELLED_HEADS = ("seq_cls", "token_cls")  # heads sized by the task's labels
Lookup = Callable[[str], ObjectiveEntry]


@dataclass(frozen=True)
class MultitaskConfig(ObjectiveConfig):
    """Several objectives, each on its own data (tasks.<name>); its keys are its tasks'."""

    name: str = "multitask"  # registered objective name (objectives/registry.py)


def task_objective(name: str, config: RunConfig) -> str:
    """The objective of tasks.<name> (its key unless tasks.<name>.objective says otherwise)."""
    return config.tasks[name].objective or name


def task_runs(config: RunConfig, lookup: Lookup) -> list[tuple[str, RunConfig]]:
    """(task name, the run config as that task sees it: its objective and data settings)."""
    settings = dataclasses.asdict(config.objective)
    runs = []
    for name, task in config.tasks.items():
        entry = lookup(task_objective(name, config))
        keys = {f.name for f in dataclasses.fields(entry.config)} - {"name"}
        objective = entry.config(**{k: settings[k] for k in keys if k in settings})
        data = config.data
        if task.train:  # its own files: a validation split of other data would not fit
            data = dataclasses.replace(data, train=task.train, validation=task.validation)
        elif task.validation:
            data = dataclasses.replace(data, validation=task.validation)
        changes = {
            key: getattr(task, key)
            for key in ("text_column", "label_column", "max_docs")
            if getattr(task, key)
        }
        data = dataclasses.replace(data, **changes)
        runs.append((name, dataclasses.replace(config, objective=objective, data=data, tasks={})))
    return runs


def stack_tasks(per_task: dict[str, Batch]) -> Batch:
    """One examples table from each task's: rows of task i fill "<task i>/<key>" and are zero
    in the other tasks' columns (never read: a task only sees its own rows)."""
    sizes = [len(next(iter(b.values()))) for b in per_task.values()]
    total, start, out = sum(sizes), 0, {}
    for (name, batch), size in zip(per_task.items(), sizes):
        for key, tensor in batch.items():
            column = torch.zeros((total, *tensor.shape[1:]), dtype=tensor.dtype)
            column[start : start + size] = tensor
            out[f"{name}{SEP}{key}"] = column
        start += size
    out["task"] = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return out


class MultiTask(ObjectiveBase):
    name = "multitask"
    packed = False  # task rows vary in length

    def __init__(
        self, objectives: dict[str, Objective], weights: dict[str, float], sample: Batch
    ) -> None:
        """`sample`: stacked examples, used once to learn each task's term names."""
        self.objectives = objectives
        self.weights = weights
        self.heads = tuple(dict.fromkeys(h for o in objectives.values() for h in o.heads))
        generator = torch.Generator().manual_seed(0)
        self.terms: dict[str, dict[str, str]] = {}  # task -> {objective's term: run's term}
        for i, (name, objective) in enumerate(objectives.items()):
            row = (sample["task"] == i).nonzero()[:1, 0]
            sub = objective.prepare(self._rows(sample, name, row), generator)
            own = list(objective.count(sub))
            self.terms[name] = {t: name if len(own) == 1 else f"{name}_{t}" for t in own}
        first = next(iter(objectives))
        self.lm_term = self.terms[first][objectives[first].lm_term]
        self.perplexity = objectives[first].perplexity
        self.vocab_head = objectives[first].vocab_head

    @staticmethod
    def _rows(batch: Batch, name: str, rows: Tensor) -> Batch:
        prefix = name + SEP
        return {k[len(prefix) :]: v[rows] for k, v in batch.items() if k.startswith(prefix)}

    @staticmethod
    def _own(batch: Batch, name: str) -> Batch:
        """A prepared batch's sub-batch of one task (empty when the task had no rows)."""
        prefix = name + SEP
        return {k[len(prefix) :]: v for k, v in batch.items() if k.startswith(prefix)}

    def prepare(self, batch: Batch, generator: torch.Generator) -> Batch:
        out: Batch = {"task": batch["task"]}
        positions = []
        for i, (name, objective) in enumerate(self.objectives.items()):
            rows = (batch["task"] == i).nonzero()[:, 0]
            if len(rows) == 0:
                continue
            sub = objective.prepare(self._rows(batch, name, rows), generator)
            out.update({f"{name}{SEP}{k}": v for k, v in sub.items()})
            positions.append(sub["input_ids"].reshape(-1))
        # the loop counts model FLOPs from batch["input_ids"]: every task's positions
        out["input_ids"] = torch.cat(positions)[None]
        return out

    def count(self, batch: Batch) -> dict[str, Tensor]:
        """Every task's terms, 0 for a task absent from the batch (ranks sum the same names)."""
        counts: dict[str, Tensor] = {}
        for name, objective in self.objectives.items():
            sub = self._own(batch, name)
            own = objective.count(sub) if sub else {}
            for term, run_term in self.terms[name].items():
                counts[run_term] = own.get(term, torch.tensor(0))
        return counts

    def losses(self, model: torch.nn.Module, batch: Batch) -> dict[str, TermResult]:
        terms: dict[str, TermResult] = {}
        for name, objective in self.objectives.items():
            sub = self._own(batch, name)
            if not sub:
                continue
            weight = self.weights[name] if model.training else 1.0
            for term, result in objective.losses(model, sub).items():
                weighted = dataclasses.replace(result, loss_sum=result.loss_sum * weight)
                terms[self.terms[name][term]] = weighted
        return terms

    def input_tokens(self, batch: Batch) -> int:
        subs = {name: self._own(batch, name) for name in self.objectives}
        return sum(self.objectives[n].input_tokens(sub) for n, sub in subs.items() if sub)

    def bind(self, model: torch.nn.Module, config: RunConfig) -> None:
        for objective in self.objectives.values():
            objective.bind(model, config)

    def train_metrics(self) -> dict[str, float]:
        return {k: v for o in self.objectives.values() for k, v in o.train_metrics().items()}

    def row_metrics(self, rows: list[tuple[list[int], list[int]]]) -> dict[str, float]:
        """The classification task's (one per run: only its terms return rows)."""
        return {k: v for o in self.objectives.values() for k, v in o.row_metrics(rows).items()}


def combine(parts: dict[str, Built], config: RunConfig) -> Built:
    """One objective, stacked examples and labels from each task's; the labels are the
    classification task's (at most one: see `check`)."""
    examples = {
        split: stack_tasks({name: part.examples[split] for name, part in parts.items()})
        for split in ("train", "validation")
    }
    weights = {name: config.tasks[name].weight for name in parts}
    objectives = {name: part.objective for name, part in parts.items()}
    labels = next((part.labels for part in parts.values() if part.labels), [])
    return Built(MultiTask(objectives, weights, examples["train"]), examples, labels)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def check(config: RunConfig, kind: Kind | None, lookup: Lookup) -> None:
    """tasks.* (weights, docs, one classification task) and each task's own checks; once the
    family is known, that each task's objective trains it."""
    _require(
        bool(config.tasks),
        "objective=multitask needs tasks, e.g. tasks.mlm.train=domain.txt tasks.seq_cls.weight=1",
    )
    labelled = []
    for name, run in task_runs(config, lookup):
        task, entry = config.tasks[name], lookup(run.objective.name)
        _require(task.weight > 0, f"tasks.{name}.weight={task.weight}: must be positive")
        _require(task.max_docs >= 0, f"tasks.{name}.max_docs={task.max_docs}: must be >= 0")
        if set(entry.heads(run)) & set(LABELLED_HEADS):
            labelled.append(name)
        entry.check(run, kind)
        if kind is not None and kind not in entry.kinds:
            raise ConfigError(
                f"tasks.{name} (objective {entry.name}) needs a {names_of_kind(*entry.kinds)} "
                f"model, but the model is a {config.model.family}"
            )
    _require(
        len(labelled) <= 1,
        f"tasks {', '.join(labelled)}: one classification task per run (their heads would "
        "share one label set)",
    )


def task_heads(config: RunConfig, lookup: Lookup) -> tuple[str, ...]:
    """Every task's heads, each once."""
    runs = task_runs(config, lookup)
    heads = (h for _, run in runs for h in lookup(run.objective.name).heads(run))
    return tuple(dict.fromkeys(heads))


def build(ctx: Context, lookup: Lookup) -> Built:
    """Each task's objective and examples, built as that objective builds them, stacked in
    memory (a text task's token-store rows read whole)."""
    parts = {}
    for name, run in task_runs(ctx.config, lookup):
        part = lookup(run.objective.name).build(dataclasses.replace(ctx, config=run, prepared=None))
        examples = {split: to_tensors(rows) for split, rows in part.examples.items()}
        parts[name] = dataclasses.replace(part, examples=examples)
    return combine(parts, ctx.config)


def _make(ctx: Context, labels: list) -> MultiTask:
    raise ConfigError(
        "objective=multitask is made from its tasks' examples (llmtune finetune); evaluate "
        "scores a multitask checkpoint as a language model"
    )


def entry(lookup: Lookup) -> ObjectiveEntry:
    """The multitask registry entry, looking its tasks' objectives up with `lookup`."""
    return ObjectiveEntry(
        name="multitask",
        config=MultitaskConfig,
        kinds=ANY_KIND,
        labelled=True,
        heads=partial(task_heads, lookup=lookup),
        make=_make,
        build=partial(build, lookup=lookup),
        scoring=Scoring.LANGUAGE_MODEL,
        check=partial(check, lookup=lookup),
        composite=True,
    )
