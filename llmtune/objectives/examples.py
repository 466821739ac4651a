"""The training and validation examples of a fine-tuning run, built by its objective: labelled
tasks from their columns, continued pretraining from plain text, multitask from each task."""

from __future__ import annotations

from functools import partial

from rich.console import Console
from tokenizers import Tokenizer

from llmtune.config.schema import RunConfig
from llmtune.data import lm_examples, prepare_once, to_tensors, tokenizer_info
from llmtune.data.labelled import class_names, load_labelled, padded_batch
from llmtune.data.overlong import fit_to_length
from llmtune.errors import DataError
from llmtune.objectives import TASK_OBJECTIVES, TASKS, build_objective, build_task, task_columns
from llmtune.objectives.multitask import combine, task_runs


def _task_examples(config: RunConfig, tokenizer: Tokenizer, console: Console) -> tuple:
    """(objective, {split: examples}, labels) for seq_cls, token_cls or sft."""
    info = tokenizer_info(tokenizer, config.model.family)
    task = TASKS[config.objective.name]
    # preference objectives load (or build) their pairs themselves
    load = getattr(task, "load", None)
    if load is not None:
        raw = load(config.data, config.seed)
    else:
        raw = load_labelled(config.data, task_columns(config.objective, config.data), config.seed)
    values = task.label_values(raw["train"], config.data)
    d = config.data
    column = d.tags_column if config.objective.name == "token_cls" else d.label_column
    labels = class_names(values, column) if values else []
    objective = build_task(config.objective, info, tokenizer, config.data, labels)
    examples = {}
    seq_len = config.model.max_seq_len
    for split in ("train", "validation"):
        encode = partial(objective.encode, seq_len=seq_len, key=split)
        _, encoded, note = fit_to_length(raw[split], encode, config.data, split, seq_len)
        if note:
            console.print(note)
        n = len(encoded.rows["input_ids"])
        if encoded.n_dropped:
            console.print(
                f"data.{split}: {encoded.n_dropped} examples dropped: the prompt filled "
                f"model.max_seq_len={seq_len}, leaving no response token to learn"
            )
        if n == 0:
            raise DataError(f"data.{split}: no usable example; check the file and its columns")
        to_batch = getattr(objective, "batch", None)  # preference pairs: two padded rows
        examples[split] = to_batch(encoded) if to_batch else padded_batch(encoded, info.pad_id)
    if config.objective.class_weights == "balanced":
        objective.fit_class_weights(examples["train"])
    return objective, examples, labels


def _lm_examples(config: RunConfig, tokenizer: Tokenizer) -> tuple:
    """Continued pretraining (mlm/clm) on plain text, read as `pretrain` reads it: token
    stores tokenized with the checkpoint's tokenizer."""
    info = tokenizer_info(tokenizer, config.model.family)
    objective = build_objective(config.objective, info)
    make = partial(objective.make_examples, seq_len=config.model.max_seq_len, seed=config.seed)
    return objective, lm_examples(make, prepare_once(config, tokenizer), config), []


def _in_memory(part: tuple) -> tuple:
    objective, examples, labels = part
    return objective, {split: to_tensors(rows) for split, rows in examples.items()}, labels


def finetune_examples(config: RunConfig, tokenizer: Tokenizer, console: Console) -> tuple:
    """(objective, {split: examples}, labels) for `config.objective`; multitask: each task's,
    stacked."""
    if config.objective.name == "multitask":
        parts = {  # stacked in memory: each task's table read whole
            name: _in_memory(finetune_examples(run, tokenizer, console))
            for name, run in task_runs(config)
        }
        return combine(parts, config)
    if config.objective.name in TASK_OBJECTIVES:
        return _task_examples(config, tokenizer, console)
    return _lm_examples(config, tokenizer)
