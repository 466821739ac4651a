"""T5 span corruption pretraining: the token stream is cut into raw blocks sized so that a
corrupted block fills model.max_seq_len exactly; each step draws new spans (as MLM draws
new masks) and the decoder predicts the dropped spans behind their sentinels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from llmtune.data import pack_documents
from llmtune.data.span_corruption import corrupt_spans, span_corruption_lengths
from llmtune.objectives.base import Batch, TermResult, sum_cross_entropy
from llmtune.objectives.seq2seq import shift_right


class SpanCorruption:
    name = "span_corruption"
    heads = ("lm",)
    lm_term = "span_corruption"
    perplexity = True  # of the targets: sentinels and dropped spans
    vocab_head = True
    packed = True

    def __init__(
        self,
        eos_id: int,
        start_id: int,
        sentinels: Sequence[int],
        noise_density: float = 0.15,
        mean_span: float = 3.0,
    ) -> None:
        self.eos_id, self.start_id = eos_id, start_id
        self.sentinels = list(sentinels)
        self.noise_density, self.mean_span = noise_density, mean_span

    def make_examples(self, token_ids, seq_len: int, seed: int) -> Batch:
        """Raw blocks [N, L] of the stream (documents joined by EOS), L from T5's arithmetic."""
        raw_len, _ = span_corruption_lengths(seq_len, self.noise_density, self.mean_span)
        return {"input_ids": pack_documents(token_ids, raw_len, self.eos_id)["input_ids"]}

    def prepare(self, batch: Batch, generator: torch.Generator) -> Batch:
        """Corrupt every raw block anew: encoder inputs [B, max_seq_len], labels [B, T]."""
        pairs = [
            corrupt_spans(
                row, self.sentinels, self.eos_id, generator, self.noise_density, self.mean_span
            )
            for row in batch["input_ids"]
        ]
        inputs = torch.stack([p[0] for p in pairs])
        labels = torch.stack([p[1] for p in pairs])
        return {
            "input_ids": inputs,
            "decoder_input_ids": shift_right(labels, self.start_id),
            "labels": labels,
        }

    def count(self, batch: Batch) -> dict[str, Tensor]:
        return {"span_corruption": torch.tensor(batch["labels"].numel())}

    def losses(self, model: torch.nn.Module, batch: Batch) -> dict[str, TermResult]:
        # packed blocks have no padding: no attention mask
        hidden = model(batch["input_ids"], decoder_input_ids=batch["decoder_input_ids"])
        logits = model.heads["lm"](hidden)  # [B, T, V]: every target position is scored
        return {
            "span_corruption": sum_cross_entropy(logits.flatten(0, 1), batch["labels"].flatten())
        }

    def input_tokens(self, batch: Batch) -> int:
        return batch["input_ids"].numel() + batch["labels"].numel()
