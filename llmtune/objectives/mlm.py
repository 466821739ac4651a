"""BERT masked LM, optionally with next-sentence prediction (`mlm_nsp`).

The vocabulary projection runs only at masked positions: ~15% of the positions
carry a target, so projecting the rest to 30k logits would be wasted work.
"""

from __future__ import annotations

import torch
from torch import Tensor

from llmtune.data import TokenizerInfo, build_pairs
from llmtune.objectives.base import Batch, TermResult, sum_cross_entropy
from llmtune.objectives.masking import MaskingSpec, mask_tokens


class MaskedLM:
    name = "mlm"
    lm_term = "mlm"
    perplexity = True
    vocab_head = True
    packed = True

    def __init__(self, info: TokenizerInfo, masking: MaskingSpec, nsp_prob: float = 0.0) -> None:
        self.info = info
        self.masking = masking
        self.nsp_prob = nsp_prob
        self.with_nsp = nsp_prob > 0
        self.heads = ("mlm", "nsp") if self.with_nsp else ("mlm",)
        if self.with_nsp:
            self.name = "mlm_nsp"

    def make_examples(self, token_ids, seq_len: int, seed: int) -> Batch:
        return build_pairs(token_ids, seq_len, self.info, self.nsp_prob, seed)

    def prepare(self, batch: Batch, generator: torch.Generator) -> Batch:
        masked, labels = mask_tokens(batch["input_ids"], self.masking, generator)
        return {**batch, "input_ids": masked, "mlm_labels": labels}

    def count(self, batch: Batch) -> dict[str, Tensor]:
        counts = {"mlm": (batch["mlm_labels"] != -100).sum()}
        if self.with_nsp:
            counts["nsp"] = torch.tensor(batch["nsp_labels"].numel())
        return counts

    def losses(self, model: torch.nn.Module, batch: Batch) -> dict[str, TermResult]:
        hidden = model.backbone(
            batch["input_ids"],
            token_type_ids=batch["token_type_ids"],
            attention_mask=batch["attention_mask"],
        )  # [B, T, D]
        labels = batch["mlm_labels"]
        at_masks = labels != -100  # [B, T]
        logits = model.heads["mlm"](hidden[at_masks])  # [n_masked, V]
        terms = {"mlm": sum_cross_entropy(logits, labels[at_masks])}
        if self.with_nsp:
            nsp_logits = model.heads["nsp"](model.backbone.pool(hidden))  # [B, 2]
            terms["nsp"] = sum_cross_entropy(nsp_logits, batch["nsp_labels"])
        return terms

    def input_tokens(self, batch: Batch) -> int:
        return int(batch["attention_mask"].sum())
