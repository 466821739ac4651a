"""`llmtune finetune`: base checkpoint (or hf:<dir>) -> task data -> method -> the training loop.

The model is rebuilt from the base's own config and tokenizer; only dropout and the
sequence length may be changed here.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path

import datasets
import torch
from rich.console import Console

from llmtune.adapters import ADAPTER_METHODS, apply_method, parameter_summary
from llmtune.adapters.base_model import Base, load_base_weights, load_table, read_base
from llmtune.config.schema import RunConfig, TokenizerConfig
from llmtune.config.validate import check_model_fits
from llmtune.data import cache_root, load_corpus, tokenize_corpus, tokenizer_info
from llmtune.data.labelled import label_names, load_labelled, padded_batch
from llmtune.data.overlong import fit_to_length
from llmtune.errors import DataError
from llmtune.models import build_model
from llmtune.objectives import TASK_OBJECTIVES, TASKS, build_objective, build_task, task_columns
from llmtune.objectives.multitask import combine, task_runs
from llmtune.train.hardware import resolve_runtime
from llmtune.train.loop import Trainer, TrainSetup


def merged_config(config: RunConfig, base: Base) -> RunConfig:
    """The run config with the base's architecture (and tokenizer settings) filled in.

    model.max_seq_len=0 means the base's length, shortened so a soft prompt still fits.
    """
    m = base.model_config
    room = m.n_positions - (config.method.n_tokens if config.method.name == "prompt" else 0)
    seq_len = config.model.max_seq_len or min(m.max_seq_len, room)
    model = dataclasses.replace(
        m,
        dropout=config.model.dropout,
        attn_dropout=config.model.attn_dropout,
        max_seq_len=seq_len,
    )
    if base.run_config is not None:
        tokenizer = base.run_config.tokenizer
    else:  # a Hugging Face folder: its tokenizer files
        tokenizer = TokenizerConfig(kind="file", path=base.ref["path"].removeprefix("hf:"))
    config = dataclasses.replace(config, model=model, tokenizer=tokenizer)
    check_model_fits(config)
    return config


def _task_examples(config: RunConfig, base: Base, console: Console) -> tuple:
    """(objective, {split: examples}, labels) for seq_cls, token_cls or sft."""
    info = tokenizer_info(base.tokenizer, config.model.family)
    task = TASKS[config.objective.name]
    # preference objectives load (or build) their pairs themselves
    load = getattr(task, "load", None)
    if load is not None:
        raw = load(config.data, config.seed)
    else:
        raw = load_labelled(config.data, task_columns(config.objective, config.data), config.seed)
    values = task.label_values(raw["train"], config.data)
    labels = label_names(values) if values else []
    objective = build_task(config.objective, info, base.tokenizer, config.data, labels)
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


def _lm_examples(config: RunConfig, base: Base) -> tuple:
    """Continued pretraining (mlm/clm) on plain text, as `pretrain` builds it."""
    info = tokenizer_info(base.tokenizer, config.model.family)
    objective = build_objective(config.objective, info)
    cache = cache_root(config.data)
    corpus = load_corpus(config.data, config.seed)
    examples = {}
    for split in ("train", "validation"):
        ids = tokenize_corpus(corpus[split], base.tokenizer, cache, config.data.num_proc)
        examples[split] = objective.make_examples(ids, config.model.max_seq_len, config.seed)
        if len(examples[split]["input_ids"]) == 0:
            raise DataError(f"data.{split}: too little text for one example; add text")
    return objective, examples, []


def _examples(config: RunConfig, base: Base, console: Console) -> tuple:
    """(objective, {split: examples}, labels); multitask: each task's, stacked."""
    if config.objective.name == "multitask":
        parts = {name: _examples(run, base, console) for name, run in task_runs(config)}
        return combine(parts, config)
    if config.objective.name in TASK_OBJECTIVES:
        return _task_examples(config, base, console)
    return _lm_examples(config, base)


def _reusable_heads(base: Base, heads: tuple[str, ...], labels: list) -> tuple[str, ...]:
    """Base heads worth keeping: LM heads always; a classifier only for the same labels."""
    same_labels = bool(labels) and base.meta.get("labels") == labels
    return tuple(h for h in heads if h not in TASK_OBJECTIVES or same_labels)


def run(config: RunConfig, run_dir: Path) -> None:
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    console = Console(highlight=False)
    runtime = resolve_runtime(config.hardware)
    torch.manual_seed(config.seed)
    base = read_base(config.init_from)
    config = merged_config(config, base)
    objective, examples, labels = _examples(config, base, console)
    model = build_model(config.model, objective.heads, len(labels))
    source = base.ref["path"]
    rows = load_base_weights(
        model, base.weights, source, _reusable_heads(base, objective.heads, labels)
    )
    console.print(load_table(rows, source))
    if hasattr(objective, "bind"):  # dpo, ppo: their reference is the model as loaded
        objective.bind(model, config)
    apply_method(model, config.method, config.seed)
    adapter = config.method.name in ADAPTER_METHODS
    n_train, n_val = (len(next(iter(examples[s].values()))) for s in ("train", "validation"))
    console.print(
        f"{config.model.family} {objective.name} with method={config.method.name}: "
        f"{parameter_summary(model)}; {n_train} train / {n_val} validation examples, "
        f"{runtime.device.type} {runtime.precision} x{runtime.threads} threads"
    )
    meta = {
        "family": config.model.family,
        "heads": list(objective.heads),
        "objective": objective.name,
        "method": config.method.name,
        **({"labels": labels} if labels else {}),
        **({"base": base.ref} if adapter else {}),
    }
    setup = TrainSetup(
        config=config,
        model=model,
        objective=objective,
        train_examples=examples["train"],
        val_examples=examples["validation"],
        tokenizer_json=base.tokenizer.to_str(),
        run_dir=run_dir,
        runtime=runtime,
        cache_dir=cache_root(config.data),
        meta=meta,
        trainable_only=adapter,
    )
    Trainer(setup).fit()
