"""`llmtune pretrain`: corpus -> tokenizer -> token stores -> examples -> model -> the loop."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import datasets
import torch

from llmtune.config.schema import RunConfig
from llmtune.console import note, stage
from llmtune.data import cache_root, prepare_once, tokenizer_info
from llmtune.errors import ConfigError
from llmtune.models import build_model
from llmtune.models import family as family_of
from llmtune.objectives import Context, entry
from llmtune.train.hardware import resolve_runtime
from llmtune.train.loop import Trainer, TrainSetup

log = logging.getLogger(__name__)


def _with_vocab(config: RunConfig, tokenizer_vocab: int) -> RunConfig:
    """Size the embedding table from the tokenizer unless model.vocab_size says otherwise."""
    vocab = config.model.vocab_size or tokenizer_vocab
    if vocab < tokenizer_vocab:
        raise ConfigError(
            f"model.vocab_size={vocab} is smaller than the tokenizer's {tokenizer_vocab} tokens; "
            "set model.vocab_size=0 to use the tokenizer's size"
        )
    return dataclasses.replace(config, model=dataclasses.replace(config.model, vocab_size=vocab))


def _describe(examples: dict, prepared, seq_len: int) -> str:  # noqa: ANN001  (PreparedData)
    """'N train / M validation examples of L tokens (K tokens of text, store reused)'."""
    train = examples["train"]
    count = f"{len(train)} train" if hasattr(train, "__len__") else "streamed train"
    tokens = sum(use.store.n_tokens for use in prepared.split("train"))
    built = [use for use in prepared.stores if use.built]
    where = f"{tokens:,} tokens of text, " if prepared.stores else ""
    where += "token store built" if built else ("token store reused" if prepared.stores else "")
    return f"{count} / {len(examples['validation'])} validation examples of {seq_len} tokens" + (
        f" ({where})" if where else ""
    )


def run(config: RunConfig, run_dir: Path) -> None:
    datasets.disable_progress_bars()  # our own progress display is the one that matters
    datasets.logging.set_verbosity_error()
    runtime = resolve_runtime(config.hardware)
    torch.manual_seed(config.seed)
    family, seq_len = family_of(config.model.family), config.model.max_seq_len
    prepared = prepare_once(config)  # the tokenizer and token stores, built once when absent
    info = tokenizer_info(prepared.tokenizer, family.tokenizer)
    config = _with_vocab(config, info.vocab_size)
    ctx = Context(config, prepared.tokenizer, info, family.kind, prepared=prepared)
    where = "the stream" if config.data.streaming else "the token stores"
    with stage("examples", f"examples of {seq_len} tokens read from {where}"):
        built = entry(config.objective.name).build(ctx)  # rows of its token stores
        objective, examples = built.objective, built.examples
        note(_describe(examples, prepared, seq_len).split(" (")[0])
    torch.manual_seed(config.seed)  # the same init whether or not data came from the cache
    model = build_model(config.model, objective.heads)
    n_params = model.num_parameters()
    print(
        f"{family.name} model: {n_params / 1e6:.2f}M parameters, objective {objective.name}, "
        f"{_describe(examples, prepared, seq_len)}, "
        f"{runtime.device.type} {runtime.precision} x{runtime.threads} threads"
    )
    setup = TrainSetup(
        config=config,
        model=model,
        objective=objective,
        train_examples=examples["train"],
        val_examples=examples["validation"],
        tokenizer_json=prepared.tokenizer.to_str(),
        run_dir=run_dir,
        runtime=runtime,
        cache_dir=cache_root(config.data),
        meta={"family": family.name, "heads": list(objective.heads), "objective": objective.name},
    )
    Trainer(setup).fit()
