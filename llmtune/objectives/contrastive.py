"""Contrastive sentence embeddings (`contrastive`): InfoNCE over cosine similarities with
in-batch negatives. Positives are a second dropout view of the same text (unsupervised,
SimCSE-style), a paired text (+ an optional hard negative), or texts sharing a label.

Each micro-batch is its own set of negatives: with accumulation, a step's loss is the mean
over all anchors of their micro-batch's InfoNCE (so 1 x B and 2 x B/2 differ: B-1 vs B/2-1
negatives); across DDP ranks negatives are not gathered either.
"""

from __future__ import annotations

import datasets
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import Tensor

from llmtune.config.objective_checks import resolve_positives as positives_of
from llmtune.config.schema import DataConfig, ObjectiveConfig
from llmtune.data import TokenizerInfo
from llmtune.data.labelled import Encoded, encode_texts, label_ids, label_names, padded_batch
from llmtune.models.pooling import sentence_embedding
from llmtune.objectives.base import Batch, TermResult

VIEWS = ("", "pos_", "neg_")  # anchor, positive, hard negative: key prefixes in a batch


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


class Contrastive:
    name = "contrastive"
    heads: tuple[str, ...] = ()  # the embedding is the pooled backbone output: no head
    lm_term = "contrastive"
    perplexity = False  # an InfoNCE loss over in-batch candidates has no perplexity
    vocab_head = False
    packed = False

    def __init__(
        self, info: TokenizerInfo, tokenizer: Tokenizer, data: DataConfig, cfg: ObjectiveConfig
    ) -> None:
        self.info = info
        self.tokenizer = tokenizer
        self.data = data
        self.temperature = cfg.temperature
        self.pooling = cfg.pooling
        self.positives = positives_of(cfg, data)

    @staticmethod
    def columns(d: DataConfig, cfg: ObjectiveConfig | None = None) -> list[str]:
        positives = positives_of(cfg, d) if cfg else "dropout"
        columns = [d.text_column]
        if positives == "pair":
            columns += [d.text_pair_column, *([d.negative_column] if d.negative_column else [])]
        if positives == "label":
            columns.append(d.label_column)
        return columns

    @staticmethod
    def label_values(split: datasets.Dataset, d: DataConfig) -> list:
        return []  # labels (positives=label) only group rows; there is no classifier head

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

    def make_examples(self, split: datasets.Dataset, seq_len: int, seed: int) -> Batch:
        return padded_batch(self.encode(split, seq_len), self.info.pad_id)

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
