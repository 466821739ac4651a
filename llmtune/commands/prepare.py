"""`llmtune prepare`: build the tokenizer and token stores a pretrain with the same overrides
will read, ahead of the job (e.g. on a CPU node), and say what was built or found."""

from __future__ import annotations

from pathlib import Path

import datasets
from rich.table import Table

from llmtune.config.schema import RunConfig
from llmtune.console import console as shared_console
from llmtune.data import prepare_once, tokenizer_info
from llmtune.data.pipeline import PreparedData
from llmtune.models import family as family_of
from llmtune.objectives import Context, entry

MiB = 1 << 20


def _store_table(prepared: PreparedData) -> Table:
    table = Table(title="token stores")
    for column in ("split", "documents", "tokens", "MiB", "bytes/token", "tokens/s", ""):
        table.add_column(column, justify="left" if column in ("split", "") else "right")
    for use in prepared.stores:
        store, name = use.store, use.split + (f" ({use.corpus})" if use.corpus else "")
        speed = f"{store.n_tokens / use.seconds:,.0f}" if use.built and use.seconds else "-"
        table.add_row(
            name,
            f"{store.n_docs:,}",
            f"{store.n_tokens:,}",
            f"{store.nbytes / MiB:,.1f}",
            f"{store.nbytes / max(store.n_tokens, 1):.2f}",
            speed,
            "built" if use.built else "found",
        )
    return table


def _reuse_line(config: RunConfig, prepared: PreparedData) -> str:
    """What `llmtune pretrain` with these overrides will read, and how many examples."""
    family = family_of(config.model.family)
    info = tokenizer_info(prepared.tokenizer, family.tokenizer)
    ctx = Context(config, prepared.tokenizer, info, family.kind, prepared=prepared)
    built = entry(config.objective.name).build(ctx)  # rows of the stores, as pretrain reads them
    objective, examples, seq_len = built.objective, built.examples, config.model.max_seq_len
    if config.data.streaming:
        return (
            "a pretrain with the same overrides will reuse the tokenizer and read the stream, "
            "tokenizing it as it trains (there is no store to prepare)"
        )
    return (
        f"a pretrain with the same overrides will reuse the tokenizer and these "
        f"{len(prepared.stores)} stores: {len(examples['train']):,} train and "
        f"{len(examples['validation']):,} validation examples of {seq_len} tokens "
        f"({objective.name})"
    )


def run(config: RunConfig, run_dir: Path) -> None:
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    console = shared_console()
    prepared = prepare_once(config)
    vocab = prepared.tokenizer.get_vocab_size(with_added_tokens=True)
    took = f" in {prepared.tokenizer_seconds:.1f} s" if prepared.tokenizer_seconds else ""
    console.print(f"tokenizer: {vocab:,} tokens{took}, {prepared.tokenizer_note}")
    if prepared.stores:
        console.print(_store_table(prepared))
        for use in prepared.stores:
            console.print(
                f"{use.split}{f' ({use.corpus})' if use.corpus else ''}: {use.store.path}"
            )
    console.print(_reuse_line(config, prepared))
