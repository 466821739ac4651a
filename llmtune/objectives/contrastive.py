"""Contrastive sentence embeddings (`contrastive`): InfoNCE over cosine similarities with
in-batch negatives. Positives are a second dropout view of the same text (unsupervised,
SimCSE-style), a paired text (+ an optional hard negative), or texts sharing a label.

Each micro-batch is its own set of negatives: with accumulation, a step's loss is the mean
over all anchors of their micro-batch's InfoNCE (so 1 x B and 2 x B/2 differ: B-1 vs B/2-1
negatives); across DDP ranks negatives are not gathered either.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import datasets
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import Tensor

from llmtune.config.schema import DataConfig, ObjectiveConfig, RunConfig
from llmtune.data import TokenizerInfo
from llmtune.data.labelled import (
    Encoded,
    encode_texts,
    label_ids,
    label_names,
    load_labelled,
    padded_batch,
)
from llmtune.errors import ConfigError
from llmtune.models.family import Kind
from llmtune.models.pooling import sentence_embedding
from llmtune.models.registry import names_of_kind
from llmtune.objectives.base import Batch, ObjectiveBase, TermResult
from llmtune.objectives.entry import ANY_KIND, Built, Context, ObjectiveEntry, Scoring, build_rows

VIEWS = ("", "pos_", "neg_")  # anchor, positive, hard negative: key prefixes in a batch
POOLINGS = ("cls", "mean")
POSITIVES = ("auto", "dropout", "pair", "label")


@dataclass(frozen=True)
class ContrastiveConfig(ObjectiveConfig):
    """Sentence embeddings: InfoNCE over cosine similarities / temperature, no head."""

    name: str = "contrastive"  # registered objective name (objectives/registry.py)
    temperature: float = 0.05  # divides the cosine similarities before the softmax
    pooling: str = "mean"  # cls (an encoder's first token) | mean (over real tokens)
    # auto (pair if data.text_pair_column, else dropout) | dropout (two dropout views of a
    # text, unsupervised) | pair (data.text_pair_column) | label (same data.label_column)
    positives: str = "auto"


def embedding_pooling(cfg: ObjectiveConfig) -> str:
    """How a checkpoint trained with `cfg` pools its sentence embeddings: objective.pooling
    where its objective has one (contrastive, or a multitask run with a contrastive task),
    else mean pooling."""
    return str(dataclasses.asdict(cfg).get("pooling", ContrastiveConfig.pooling))


def positives_of(objective: ContrastiveConfig, data: DataConfig) -> str:
    """objective.positives with `auto` resolved: pair when data.text_pair_column is set."""
    if objective.positives == "auto":
        return "pair" if data.text_pair_column else "dropout"
    return objective.positives


def info_nce(queries: Tensor, keys: Tensor, temperature: float) -> TermResult:
    """Summed InfoNCE of queries [B,D] against keys [K,D] (K >= B; key i is query i's positive,
    every other key a negative), and how many queries rank their positive first."""
    q, k = F.normalize(queries.float(), dim=-1), F.normalize(keys.float(), dim=-1)
    logits = q @ k.T / temperature  # [B,K] cosine / T
    targets = torch.arange(len(q), device=q.device)
    loss = F.cross_entropy(logits, targets, reduction="sum")
    return TermResult(loss, (logits.argmax(-1) == targets).sum())


def label_info_nce(embeddings: Tensor, classes: Tensor, temperature: float) -> TermResult:
    """Summed supervised InfoNCE over [N,D] rows: each row's positives are the other rows of
    its class (each row has at least one: its other view), all rows but itself the candidates.
    A row's loss is the mean over its positives of -log softmax; `correct` counts rows whose
    most similar other row is of the same class (in-batch 1-NN)."""
    z = F.normalize(embeddings.float(), dim=-1)
    self_pair = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(self_pair, float("-inf"))  # [N,N]
    log_prob = logits - logits.logsumexp(-1, keepdim=True)
    positive = (classes[:, None] == classes[None, :]) & ~self_pair
    n_pos = positive.sum(-1).clamp(min=1)
    loss = -(log_prob.masked_fill(~positive, 0.0).sum(-1) / n_pos).sum()
    nearest = logits.argmax(-1)
    return TermResult(loss, (classes[nearest] == classes).sum())


def _trim(batch: Batch, prefix: str) -> None:
    """Cut one view's columns past its longest row (dynamic padding, as seq_cls does)."""
    mask = batch[f"{prefix}attention_mask"]
    width = max(int(mask.sum(1).max()), 1) if len(mask) else 1
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        if f"{prefix}{key}" in batch:
            batch[f"{prefix}{key}"] = batch[f"{prefix}{key}"][:, :width]


class Contrastive(ObjectiveBase):
    name = "contrastive"
    heads: tuple[str, ...] = ()  # the embedding is the pooled backbone output: no head
    lm_term = "contrastive"
    perplexity = False  # an InfoNCE loss over in-batch candidates has no perplexity
    vocab_head = False
    packed = False

    def __init__(
        self, info: TokenizerInfo, tokenizer: Tokenizer, data: DataConfig, cfg: ContrastiveConfig
    ) -> None:
        self.info = info
        self.tokenizer = tokenizer
        self.data = data
        self.temperature = cfg.temperature
        self.pooling = cfg.pooling
        self.positives = positives_of(cfg, data)

    @staticmethod
    def columns(d: DataConfig, cfg: ContrastiveConfig | None = None) -> list[str]:
        positives = positives_of(cfg, d) if cfg else "dropout"
        columns = [d.text_column]
        if positives == "pair":
            columns += [d.text_pair_column, *([d.negative_column] if d.negative_column else [])]
        if positives == "label":
            columns.append(d.label_column)
        return columns

    def encode(self, split: datasets.Dataset, seq_len: int, key: str = "train") -> Encoded:
        d = self.data
        texts = [str(t) for t in split[d.text_column]]
        encoded = encode_texts(self.tokenizer, texts, None, seq_len)
        if self.positives == "label":  # class ids only need to agree within this split
            values = split[d.label_column]
            encoded.rows["labels"] = label_ids(values, label_names(values), key)
        if self.positives == "pair":
            columns = {"pos_": d.text_pair_column, "neg_": d.negative_column}
            for prefix, column in columns.items():
                if column:
                    view = encode_texts(
                        self.tokenizer, [str(t) for t in split[column]], None, seq_len
                    )
                    encoded.rows[f"{prefix}input_ids"] = view.rows["input_ids"]
                    # a row is over-long when any of its views is
                    for row, length in view.overlong.items():
                        encoded.overlong[row] = max(length, encoded.overlong.get(row, 0))
        return encoded

    def batch(self, encoded: Encoded) -> Batch:
        return padded_batch(encoded, self.info.pad_id)

    def prepare(self, batch: Batch, generator: torch.Generator | None) -> Batch:
        batch = dict(batch)
        for prefix in VIEWS:
            if f"{prefix}attention_mask" in batch:
                _trim(batch, prefix)
        return batch

    def count(self, batch: Batch) -> dict[str, Tensor]:
        n = len(batch["input_ids"])
        # positives=label scores both views of every row as anchors
        return {"contrastive": torch.tensor(2 * n if self.positives == "label" else n)}

    def embed(self, model: torch.nn.Module, batch: Batch, prefix: str = "") -> Tensor:
        """[B,D] embeddings of one view of a prepared batch."""
        return sentence_embedding(
            model,
            batch[f"{prefix}input_ids"],
            batch[f"{prefix}attention_mask"],
            self.pooling,
            batch.get(f"{prefix}token_type_ids"),
        )

    def losses(self, model: torch.nn.Module, batch: Batch) -> dict[str, TermResult]:
        if self.positives == "pair":
            keys = [self.embed(model, batch, "pos_")]
            if "neg_input_ids" in batch:
                keys.append(self.embed(model, batch, "neg_"))
            term = info_nce(self.embed(model, batch), torch.cat(keys), self.temperature)
            return {"contrastive": term}
        # dropout / label: one forward of the batch twice over; each copy draws its own
        # dropout masks, so the copies are two views of every text
        twice = {k: torch.cat([v, v]) for k, v in batch.items()}
        views = self.embed(model, twice)  # [2B,D]
        n = len(batch["input_ids"])
        if self.positives == "dropout":
            return {"contrastive": info_nce(views[:n], views[n:], self.temperature)}
        return {"contrastive": label_info_nce(views, twice["labels"], self.temperature)}

    def input_tokens(self, batch: Batch) -> int:
        masks = [batch[f"{p}attention_mask"] for p in VIEWS if f"{p}attention_mask" in batch]
        real = sum(int(m.sum()) for m in masks)
        return real * (1 if self.positives == "pair" else 2)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def check(config: RunConfig, kind: Kind | None) -> None:
    """objective.* of contrastive training, and the batch it needs for in-batch negatives;
    cls pooling (once the family is known) needs an encoder's [CLS] token."""
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
    positives = positives_of(o, d)
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
    _require(
        kind is None or o.pooling != "cls" or kind == Kind.ENCODER,
        f"objective.pooling=cls needs a {names_of_kind(Kind.ENCODER)} model (a causal model's "
        "first token has seen nothing else); use objective.pooling=mean",
    )


def make(ctx: Context, labels: list) -> Contrastive:
    return Contrastive(ctx.info, ctx.tokenizer, ctx.config.data, ctx.config.objective)


def build(ctx: Context) -> Built:
    config = ctx.config
    columns = Contrastive.columns(config.data, config.objective)
    return build_rows(ctx, make, load_labelled(config.data, columns, config.seed), [])


ENTRY = ObjectiveEntry(
    name="contrastive",
    config=ContrastiveConfig,
    kinds=ANY_KIND,
    labelled=True,
    heads=lambda config: (),  # the embedding is the pooled backbone output
    make=make,
    build=build,
    scoring=Scoring.EMBEDDINGS,
    check=check,
    columns=lambda cfg, data: Contrastive.columns(data, cfg),
)
