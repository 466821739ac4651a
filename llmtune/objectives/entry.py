"""The objective registry entry: what one objective module declares to be registered (its
name, config class, checks, heads, the family kinds it trains, how it is made and how its
examples are built, how `llmtune evaluate` scores it), and the context it is built in."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from rich.console import Console
from tokenizers import Tokenizer

from llmtune.config.schema import ObjectiveConfig, RunConfig
from llmtune.console import console as shared_console
from llmtune.data import PreparedData, TokenizerInfo
from llmtune.data.examples import encoded_splits, text_examples
from llmtune.models.family import Kind
from llmtune.objectives.base import Batch, Objective, RowTask, TextObjective

ANY_KIND = (Kind.ENCODER, Kind.DECODER, Kind.ENCODER_DECODER)


class Scoring(StrEnum):
    """How `llmtune evaluate` (and export's int8 check) scores a checkpoint on data.test."""

    LANGUAGE_MODEL = "language_model"  # perplexity (decoders) or masked-LM loss (encoders)
    CLASSIFICATION = "classification"  # accuracy, P/R/F1, confusion of one label per row
    TAGGING = "tagging"  # entity-level P/R/F1 of word tags
    INSTRUCTIONS = "instructions"  # response loss, or generated answers
    PAIRWISE = "pairwise"  # chosen above rejected on preference pairs
    EMBEDDINGS = "embeddings"  # kNN / linear probe of pooled embeddings
    GENERATION = "generation"  # generated targets against references (evaluation/seq2seq.py)


class Loaded(Protocol):
    """What an objective reads of a loaded checkpoint (llmtune.loading.LoadedCheckpoint)."""

    model: Any  # a LanguageModel in eval mode
    tokenizer: Tokenizer
    meta: dict[str, Any]


LoadCheckpoint = Callable[[str], Loaded]


@dataclass(frozen=True)
class Context:
    """What an objective is made in: the run's settings (`config.objective` is its own,
    `config.data` where its rows come from), the tokenizer, and the model family's kind."""

    config: RunConfig
    tokenizer: Tokenizer
    info: TokenizerInfo
    kind: Kind
    console: Console = field(default_factory=shared_console)  # where data notes go
    # the checkpoint loader (llmtune/loading.py, above this layer): ppo's reward model
    load_checkpoint: LoadCheckpoint | None = None
    # the run's tokenizer and token stores when the command has prepared them (pretrain)
    prepared: PreparedData | None = None


@dataclass(frozen=True)
class Built:
    """A ready objective, its examples ({"train", "validation"}: tensors) and label names."""

    objective: Objective
    examples: dict[str, Batch]
    labels: list = field(default_factory=list)


def no_checks(config: RunConfig, kind: Kind | None) -> None:
    """Objectives without checks beyond their keys' types."""


def no_columns(cfg: ObjectiveConfig, data: Any) -> list[str]:
    return []


def no_target(data: Any) -> str:
    return ""


def no_vocab(cfg: ObjectiveConfig, seq_len: int) -> float:
    return 0.0


@dataclass(frozen=True)
class ObjectiveEntry:
    """One objective, by name (objectives/registry.py lists them).

    `make(ctx, labels)` builds the runtime objective from settings alone (evaluate does that
    for a checkpoint); `build(ctx)` also reads and encodes its training data. `check(config,
    kind)` runs on the whole run config before anything is loaded, with the family's kind
    when it is known (finetune knows it only once its checkpoint is read: kind None first).
    """

    name: str
    config: type[ObjectiveConfig]  # its keys (objective.<key>) with their defaults
    kinds: tuple[Kind, ...]  # family kinds it trains
    labelled: bool  # True: a fine-tuning task on labelled rows; False: plain text (pretrain)
    heads: Callable[[RunConfig], tuple[str, ...]]  # the heads its model needs
    make: Callable[[Context, list], Objective]
    build: Callable[[Context], Built]
    scoring: Scoring
    check: Callable[[RunConfig, Kind | None], None] = no_checks
    # the labelled columns it reads (evaluate loads data.test with them) and, of those, the
    # one holding targets: a split without it is predicted only
    columns: Callable[[ObjectiveConfig, Any], list[str]] = no_columns
    target_column: Callable[[Any], str] = no_target
    # plan: share of positions whose target goes through the vocabulary projection, and
    # whether that projection is fused with the loss (objectives/chunked_ce.py)
    vocab_share: Callable[[ObjectiveConfig, int], float] = no_vocab
    fused_vocab_loss: bool = False
    # data.packing=true may put several of its examples in one row (doc_ids keep them apart)
    packing: bool = False
    # its settings are the union of its tasks' objectives' (multitask)
    composite: bool = False


def build_text(ctx: Context, objective: TextObjective) -> Built:
    """An objective on plain text: rows cut by `make_examples` from the run's token stores."""
    examples = text_examples(ctx.config, ctx.tokenizer, objective.make_examples, ctx.prepared)
    return Built(objective, examples)


def text_build(make: Callable[[Context, list], TextObjective]) -> Callable[[Context], Built]:
    """The `build` of an objective on plain text: the objective `make` gives, on the stores."""
    return lambda ctx: build_text(ctx, make(ctx, []))


def build_rows(
    ctx: Context,
    make: Callable[[Context, list], RowTask],
    raw: dict[str, Any],
    labels: list,
) -> Built:
    """An objective on labelled rows: `raw` splits (train, validation) encoded by the task
    `make` builds with the class names `labels` (empty: no label vocabulary)."""
    task = make(ctx, labels)
    encoded = encoded_splits(raw, task.encode, ctx.config, ctx.console)
    return Built(task, {split: task.batch(e) for split, e in encoded.items()}, labels)
