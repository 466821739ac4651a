"""Causal LM (`clm`) on packed documents: predict every next token inside a fixed-length block."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from llmtune.config.schema import ObjectiveConfig
from llmtune.data import pack_documents
from llmtune.models.family import Kind
from llmtune.models.heads import LMHead
from llmtune.objectives.base import Batch, ObjectiveBase, TermResult, sum_cross_entropy
from llmtune.objectives.chunked_ce import linear_cross_entropy
from llmtune.objectives.entry import Context, ObjectiveEntry, Scoring, text_build


@dataclass(frozen=True)
class CLMConfig(ObjectiveConfig):
    """Causal language modelling of packed documents (a decoder's pretraining)."""

    name: str = "clm"  # registered objective name (objectives/registry.py)
    separate_documents: bool = True  # packed documents never attend to each other


class CausalLM(ObjectiveBase):
    name = "clm"
    heads = ("lm",)
    lm_term = "clm"
    perplexity = True
    vocab_head = True
    packed = True

    def __init__(self, eos_id: int, separate_documents: bool = True) -> None:
        self.eos_id = eos_id
        self.separate_documents = separate_documents

    def make_examples(self, token_ids, seq_len: int, seed: int) -> Batch:
        return pack_documents(token_ids, seq_len, self.eos_id)

    def prepare(self, batch: Batch, generator: torch.Generator) -> Batch:
        return batch  # targets are the inputs shifted by one; nothing random

    def count(self, batch: Batch) -> dict[str, Tensor]:
        ids = batch["input_ids"]
        return {"clm": torch.tensor(ids.shape[0] * (ids.shape[1] - 1))}

    def hidden(self, model: torch.nn.Module, batch: Batch) -> Tensor:
        """[B, T, D] features of packed rows (documents kept apart when asked)."""
        doc_ids = batch.get("doc_ids") if self.separate_documents else None
        return model.backbone(batch["input_ids"], doc_ids=doc_ids)

    def losses(self, model: torch.nn.Module, batch: Batch) -> dict[str, TermResult]:
        return {"clm": self.hard_loss(model, self.hidden(model, batch), batch)}

    @staticmethod
    def hard_loss(model: torch.nn.Module, hidden: Tensor, batch: Batch) -> TermResult:
        """Summed next-token cross-entropy of [B, T, D] `hidden` through the lm head."""
        targets = batch["input_ids"][:, 1:]
        head = model.heads["lm"]
        if isinstance(head, LMHead):
            # projection fused with the loss in chunks: the [B*(T-1), V] logits never exist
            loss, correct = linear_cross_entropy(
                hidden[:, :-1].flatten(0, 1), head.weight, targets.flatten()
            )
            return TermResult(loss, correct)
        logits = head(hidden[:, :-1])  # [B, T-1, V]
        return sum_cross_entropy(logits.flatten(0, 1), targets.flatten())

    def input_tokens(self, batch: Batch) -> int:
        return batch["input_ids"].numel()


def make(ctx: Context, labels: list) -> CausalLM:
    return CausalLM(ctx.info.eos_id, ctx.config.objective.separate_documents)


ENTRY = ObjectiveEntry(
    name="clm",
    config=CLMConfig,
    kinds=(Kind.DECODER,),
    labelled=False,
    heads=lambda config: ("lm",),
    make=make,
    build=text_build(make),
    scoring=Scoring.LANGUAGE_MODEL,
    vocab_share=lambda cfg, seq_len: (seq_len - 1) / seq_len,  # every position but the last
    fused_vocab_loss=True,
)
