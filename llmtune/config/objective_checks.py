"""Value checks of the contrastive objective, embedding evaluation and multi-task `tasks.*`,
called from `validate.py` (run-level) and `check_model_fits` (once the family is known)."""

from __future__ import annotations

import difflib

from llmtune.config.schema import DataConfig, ObjectiveConfig, RunConfig
from llmtune.errors import ConfigError
from llmtune.models.family import Kind
from llmtune.models.registry import family, names_of_kind

POOLINGS = ("cls", "mean")
POSITIVES = ("auto", "dropout", "pair", "label")
# tasks.* objectives: each brings its own loss; multitask cannot nest
TASK_NAMES = ("mlm", "mlm_nsp", "clm", "seq_cls", "token_cls", "sft", "contrastive")
LABELLED = ("seq_cls", "token_cls")  # a classifier head sized by the task's labels


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def resolve_positives(objective: ObjectiveConfig, data: DataConfig) -> str:
    """objective.positives with `auto` resolved: pair when data.text_pair_column is set."""
    if objective.positives == "auto":
        return "pair" if data.text_pair_column else "dropout"
    return objective.positives


def task_objective(name: str, config: RunConfig) -> str:
    """The objective of tasks.<name> (its key unless tasks.<name>.objective says otherwise)."""
    return config.tasks[name].objective or name


def check_contrastive(config: RunConfig) -> None:
    """objective.* of contrastive training, and the batch it needs for in-batch negatives."""
    o, d = config.objective, config.data
    _require(o.temperature > 0, f"objective.temperature={o.temperature}: must be positive")
    _require(
        o.pooling in POOLINGS,
        f"objective.pooling={o.pooling!r}: expected one of {', '.join(POOLINGS)}",
    )
    _require(
        o.positives in POSITIVES,
        f"objective.positives={o.positives!r}: expected one of {', '.join(POSITIVES)}",
    )
    positives = resolve_positives(o, d)
    _require(
        positives != "pair" or bool(d.text_pair_column),
        "objective.positives=pair needs data.text_pair_column=<column of positive texts>",
    )
    _require(
        positives != "dropout" or config.model.dropout > 0,
        "objective.positives=dropout makes two views of a text by dropout; set model.dropout>0 "
        "(e.g. 0.1)",
    )
    hard_negative = positives == "pair" and bool(d.negative_column)
    _require(
        config.train.micro_batch_size >= 2 or hard_negative,
        f"train.micro_batch_size={config.train.micro_batch_size}: objective=contrastive "
        "contrasts each text with the others in its micro-batch; use 2 or more",
    )


def check_tasks(config: RunConfig) -> None:
    """objective=multitask needs tasks.*, and tasks.* needs objective=multitask."""
    multitask = config.objective.name == "multitask"
    _require(
        not multitask or bool(config.tasks),
        "objective=multitask needs tasks, e.g. tasks.mlm.train=domain.txt tasks.seq_cls.weight=1",
    )
    _require(
        multitask or not config.tasks,
        f"tasks.{next(iter(config.tasks), '')} is set but objective={config.objective.name}; "
        "add objective=multitask",
    )
    labelled = []
    for name, task in config.tasks.items():
        objective = task_objective(name, config)
        if objective not in TASK_NAMES:
            close = difflib.get_close_matches(objective, TASK_NAMES, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"tasks.{name}: no objective '{objective}'{hint} (objectives: "
                f"{', '.join(TASK_NAMES)}; or name the task: tasks.{name}.objective=<objective>)"
            )
        _require(task.weight > 0, f"tasks.{name}.weight={task.weight}: must be positive")
        _require(task.max_docs >= 0, f"tasks.{name}.max_docs={task.max_docs}: must be >= 0")
        if objective in LABELLED:
            labelled.append(name)
        if objective == "contrastive":
            check_contrastive(config)
    _require(
        len(labelled) <= 1,
        f"tasks {', '.join(labelled)}: one classification task per run (their heads would "
        "share one label set)",
    )


def check_task_families(config: RunConfig, kinds: dict[str, tuple[Kind, ...]]) -> None:
    """cls pooling needs an encoder's [CLS] token: a causal model has read nothing at
    position 0."""
    names = [task_objective(n, config) for n in config.tasks] or [config.objective.name]
    uses_pooling = "contrastive" in names
    kind = family(config.model.family).kind
    _require(
        not uses_pooling or config.objective.pooling != "cls" or kind == Kind.ENCODER,
        f"objective.pooling=cls needs a {names_of_kind(Kind.ENCODER)} model (a causal model's "
        "first token has seen nothing else); use objective.pooling=mean",
    )
    for name in config.tasks:
        objective = task_objective(name, config)
        _require(
            kind in kinds[objective],
            f"tasks.{name} (objective {objective}) needs a {names_of_kind(*kinds[objective])} "
            f"model, but the model is a {config.model.family}",
        )


def check_embedding_evaluation(config: RunConfig) -> None:
    e = config.evaluate
    _require(
        e.pooling in ("", *POOLINGS),
        f"evaluate.pooling={e.pooling!r}: expected one of {', '.join(POOLINGS)} "
        "(or empty for the checkpoint's)",
    )
    _require(e.knn_k >= 1, f"evaluate.knn_k={e.knn_k}: must be >= 1")
