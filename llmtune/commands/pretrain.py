"""`llmtune pretrain`: corpus -> tokenizer -> examples -> model -> the training loop."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import datasets
import torch

from llmtune.config.schema import RunConfig
from llmtune.console import note, stage
from llmtune.data import cache_root, get_tokenizer, load_corpus, tokenizer_info
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


def run(config: RunConfig, run_dir: Path) -> None:
    datasets.disable_progress_bars()  # our own progress display is the one that matters
    datasets.logging.set_verbosity_error()
    runtime = resolve_runtime(config.hardware)
    torch.manual_seed(config.seed)
    family = family_of(config.model.family)
    cache = cache_root(config.data)
    with stage("corpus", f"reading data={config.data.source}"):
        corpus = load_corpus(config.data, config.seed)
        note(f"{len(corpus['train']):,} train / {len(corpus['validation']):,} validation documents")
    with stage("tokenizer", f"{config.tokenizer.kind} for {family.name}"):
        tokenizer = get_tokenizer(config.tokenizer, family.tokenizer, corpus["train"], cache)
    info = tokenizer_info(tokenizer, family.tokenizer)
    config = _with_vocab(config, info.vocab_size)
    ctx = Context(config, tokenizer, info, family.kind, corpus=corpus)
    built = entry(config.objective.name).build(ctx)  # its examples, staged (data/examples.py)
    objective, examples = built.objective, built.examples
    torch.manual_seed(config.seed)  # the same init whether or not data came from the cache
    model = build_model(config.model, objective.heads)
    n_params = model.num_parameters()
    seq_len = config.model.max_seq_len
    print(
        f"{family.name} model: {n_params / 1e6:.2f}M parameters, objective {objective.name}, "
        f"{len(examples['train']['input_ids'])} train / "
        f"{len(examples['validation']['input_ids'])} validation examples of {seq_len} tokens, "
        f"{runtime.device.type} {runtime.precision} x{runtime.threads} threads"
    )
    setup = TrainSetup(
        config=config,
        model=model,
        objective=objective,
        train_examples=examples["train"],
        val_examples=examples["validation"],
        tokenizer_json=tokenizer.to_str(),
        run_dir=run_dir,
        runtime=runtime,
        cache_dir=cache,
        meta={"family": family.name, "heads": list(objective.heads), "objective": objective.name},
    )
    Trainer(setup).fit()
