"""`llmtune finetune`: base checkpoint (or hf:<dir>) -> task data -> method -> the training loop.

The model is rebuilt from the base's own config and tokenizer; only dropout and the
sequence length may be changed here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import datasets
import torch

from llmtune.adapters import ADAPTER_METHODS, apply_method, parameter_summary
from llmtune.adapters.base_model import Base, load_base_weights, load_table, read_base
from llmtune.config.schema import RunConfig, TokenizerConfig
from llmtune.config.validate import check_model_fits
from llmtune.console import console as shared_console
from llmtune.console import note, stage
from llmtune.data import cache_root
from llmtune.models import build_model
from llmtune.objectives import TASK_OBJECTIVES
from llmtune.objectives.examples import finetune_examples
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


def _reusable_heads(base: Base, heads: tuple[str, ...], labels: list) -> tuple[str, ...]:
    """Base heads worth keeping: LM heads always; a classifier only for the same labels."""
    same_labels = bool(labels) and base.meta.get("labels") == labels
    return tuple(h for h in heads if h not in TASK_OBJECTIVES or same_labels)


def run(config: RunConfig, run_dir: Path) -> None:
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    console = shared_console()
    runtime = resolve_runtime(config.hardware)
    torch.manual_seed(config.seed)
    with stage("base model", f"reading {config.init_from}"):
        base = read_base(config.init_from)
        note(f"{len(base.weights)} tensors and the tokenizer of {base.ref['path']}")
    config = merged_config(config, base)
    with stage("data", "reading and tokenizing the task's rows"):
        objective, examples, labels = finetune_examples(config, base.tokenizer, console)
        n_train, n_val = (len(next(iter(examples[s].values()))) for s in ("train", "validation"))
        note(
            f"{n_train:,} train / {n_val:,} validation examples"
            + (labels and f", {len(labels)} labels" or "")
        )
    model = build_model(config.model, objective.heads, len(labels))
    source = base.ref["path"]
    with stage("weights", "loading the base model's weights into the task model"):
        rows = load_base_weights(
            model, base.weights, source, _reusable_heads(base, objective.heads, labels)
        )
    console.print(load_table(rows, source))
    if hasattr(objective, "bind"):  # dpo, ppo: their reference is the model as loaded
        objective.bind(model, config)
    apply_method(model, config.method, config.seed)
    adapter = config.method.name in ADAPTER_METHODS
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
