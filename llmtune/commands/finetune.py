"""`llmtune finetune`: base checkpoint (or hf:<dir>) -> task data -> method -> the training loop.

The model is rebuilt from the base's own config and tokenizer; only dropout and the
sequence length may be changed here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import datasets
import torch

from llmtune.adapters import METHODS, apply_method, parameter_summary
from llmtune.config.schema import RunConfig
from llmtune.config.validate import check_model_fits, resolve_auto
from llmtune.console import console as shared_console
from llmtune.console import note, stage
from llmtune.data import cache_root, tokenizer_info
from llmtune.data.rows import as_rows
from llmtune.errors import ConfigError
from llmtune.loading import Base, load_base_weights, load_checkpoint, load_table, read_base
from llmtune.models import build_model, family
from llmtune.objectives import Context, entry
from llmtune.train.hardware import resolve_runtime
from llmtune.train.loop import Trainer, TrainSetup


def _check_expected(config: RunConfig, base: Base) -> None:
    """Architecture keys given with finetune must equal the checkpoint's: it is not rebuilt."""
    m = base.model_config
    own = {f.name for f in dataclasses.fields(m)}
    for key, value in config.model.expected:
        if key not in own:
            raise ConfigError(
                f"model.{key}={value}: init_from={config.init_from} is a {m.family} model, "
                f"which has no {key}; drop model.{key}"
            )
        if getattr(m, key) != value:
            raise ConfigError(
                f"model.{key}={value} contradicts init_from={config.init_from}, whose {key} is "
                f"{getattr(m, key)}; fine-tuning keeps the checkpoint's architecture (drop "
                f"model.{key})"
            )


def merged_config(config: RunConfig, base: Base) -> tuple[RunConfig, list[tuple[str, str, str]]]:
    """The run config with the base's architecture (and tokenizer settings) filled in, and the
    model keys this run sets on it (rows for the load table).

    model.max_seq_len=0 means the base's length, shortened so a soft prompt still fits.
    """
    _check_expected(config, base)
    m = base.model_config
    room = m.max_positions - config.method.positions
    changes = {
        "max_seq_len": config.model.max_seq_len or min(m.max_seq_len, room),
        "dropout": config.model.dropout,
        "attn_dropout": config.model.attn_dropout,
    }
    model = dataclasses.replace(m, **changes)
    # an llmtune base's own tokenizer settings, else the folder's or GGUF file's
    tokenizer = base.run_config.tokenizer if base.run_config is not None else base.tokenizer_config
    config = resolve_auto(dataclasses.replace(config, model=model, tokenizer=tokenizer))
    check_model_fits(config)
    rows = [("set", f"model.{k}={v}", f"checkpoint: {getattr(m, k)}") for k, v in changes.items()]
    return config, rows


# Heads whose weights mean something only for the labels (or scores) they were trained on.
LABELLED_HEADS = ("seq_cls", "token_cls", "reward")


def _reusable_heads(base: Base, heads: tuple[str, ...], labels: list) -> tuple[str, ...]:
    """Base heads worth keeping: LM heads always; a classifier only for the same labels."""
    same_labels = bool(labels) and base.meta.get("labels") == labels
    return tuple(h for h in heads if h not in LABELLED_HEADS or same_labels)


def run(config: RunConfig, run_dir: Path) -> None:
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    console = shared_console()
    runtime = resolve_runtime(config.hardware)
    torch.manual_seed(config.seed)
    with stage("base model", f"reading {config.init_from}"):
        base = read_base(config.init_from)
        note(f"{len(base.weights)} tensors and the tokenizer of {base.ref['path']}")
    config, settings = merged_config(config, base)
    fam = family(config.model.family)
    info = tokenizer_info(base.tokenizer, fam.tokenizer)
    ctx = Context(config, base.tokenizer, info, fam.kind, console, load_checkpoint=load_checkpoint)
    with stage("data", "reading and tokenizing the task's rows"):
        built = entry(config.objective.name).build(ctx)
        objective, examples, labels = built.objective, built.examples, built.labels
        n_train, n_val = (len(as_rows(examples[s])) for s in ("train", "validation"))
        # packed rows hold several examples each (data.packing=true): say which is counted
        unit = "packed rows" if getattr(config.data, "packing", False) else "examples"
        note(
            f"{n_train:,} train / {n_val:,} validation {unit}"
            + (labels and f", {len(labels)} labels" or "")
        )
    model = build_model(config.model, objective.heads, len(labels))
    source = base.ref["path"]
    with stage("weights", "loading the base model's weights into the task model"):
        rows = load_base_weights(
            model, base.weights, source, _reusable_heads(base, objective.heads, labels)
        )
    console.print(load_table([*rows, *settings], source))
    objective.bind(model, config)  # dpo, ppo: their reference is the model as loaded
    apply_method(model, config.method, config.seed)
    adapter = METHODS[config.method.name].adapter
    console.print(
        f"{config.model.family} {objective.name} with method={config.method.name}: "
        f"{parameter_summary(model)}; {n_train} train / {n_val} validation {unit}, "
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
