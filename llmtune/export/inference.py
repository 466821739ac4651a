"""`InferenceModel`: a model as plain tensors in and one logits tensor per head out (the graph
every export format captures), and the sample inputs exports are traced and verified on."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer
from torch import nn

from llmtune.data import TokenizerInfo
from llmtune.data.labelled import encode_texts, padded_batch
from llmtune.models import LanguageModel
from llmtune.models.pooling import pool_hidden
from llmtune.models.t5 import DECODER_START_ID

# Plain English of different lengths, so padding and the dynamic axes are exercised.
SAMPLE_TEXTS = (
    "The old stone bridge crosses the river north of the city.",
    "A quiet garden.",
    "Music and light fill the modern city at night, and people walk home slowly in the rain.",
)
# one row per sequence, not per token; "sentence_embedding" is the output of a model with no
# heads (a contrastive sentence encoder): its pooled, L2-normalised embedding
SEQUENCE_HEADS = ("nsp", "seq_cls", "sentence_embedding")


def input_names(model: LanguageModel) -> tuple[str, ...]:
    """The inputs of an exported graph, in positional order: input_ids, attention_mask, then
    what else the family reads (bert: token_type_ids; t5: decoder_input_ids)."""
    base = ("input_ids", "attention_mask")
    return (*base, *(n for n in model.input_names if n not in base))


def output_names(heads: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(head if head == "sentence_embedding" else f"{head}_logits" for head in heads)


class InferenceModel(nn.Module):
    """forward(input_ids, attention_mask[, token_type_ids]) -> logits of every head, in order.
    The third input is the family's third (bert: token_type_ids; t5: decoder_input_ids, whose
    teacher-forced decoder states the lm head projects; t5's exported graphs are
    export/seq2seq_graphs.py's, so none names t5's input after BERT's segments; this graph
    gives the logits they are verified against).

    Token heads give [B,T,*] (mlm over every position), sequence heads [B,*]. Rows are right
    padded; gpt's sequence heads read the last real token, as llmtune's seq_cls does.
    """

    def __init__(self, model: LanguageModel, pooling: str = "mean") -> None:
        super().__init__()
        self.model = model
        self.heads = tuple(model.heads) or ("sentence_embedding",)
        self.pooling = pooling  # of the embedding output (checkpoint's objective.pooling)
        self.extra_name = (input_names(model)[2:] or ("token_type_ids",))[0]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:  # the argument's name is what exported graphs call it
            batch[self.extra_name] = token_type_ids
        hidden = self.model.features(batch)  # as training reads right-padded rows
        out = []
        for name in self.heads:
            if name == "sentence_embedding":
                pooled = pool_hidden(hidden, attention_mask, self.pooling)
                out.append(nn.functional.normalize(pooled, dim=-1))
                continue
            head = self.model.heads[name]
            if name in SEQUENCE_HEADS:
                out.append(head(self.model.pool(hidden, attention_mask.sum(1) - 1)))
            else:
                out.append(head(hidden))
        return tuple(out)


def sample_inputs(
    tokenizer: Tokenizer, info: TokenizerInfo, model: LanguageModel, max_len: int, n: int = 3
) -> dict[str, torch.Tensor]:
    """The first `n` sample texts encoded and padded as fine-tuning does (BERT: [CLS] .. [SEP],
    cut to `max_len` keeping the special tokens), in the graph's input order."""
    encoded = encode_texts(tokenizer, list(SAMPLE_TEXTS[:n]), None, max_len)
    if "decoder_input_ids" in model.input_names:  # an encoder-decoder's teacher-forced targets:
        # the start token, then each source's first tokens (right-padded as training does)
        targets = [
            [DECODER_START_ID, *ids[: 1 + 2 * i]] for i, ids in enumerate(encoded.rows["input_ids"])
        ]
        encoded.rows["decoder_input_ids"] = targets
    batch = padded_batch(encoded, info.pad_id)
    return {name: batch[name] for name in input_names(model)}


def example_inputs(sample: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A smaller batch (2 rows, 2 columns fewer) to trace with, so verifying on `sample`
    proves the batch and sequence axes really are dynamic."""
    width = max(2, sample["input_ids"].shape[1] - 2)
    return {k: v[:2, :width].clone() for k, v in sample.items()}


def dynamic_shapes(names: tuple[str, ...], max_positions: int) -> dict[str, dict[int, object]]:
    """torch.export dims: batch and sequence vary; the sequence fits the position table."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("sequence", min=1, max=max_positions)
    # an encoder-decoder's targets have a length of their own
    target = torch.export.Dim("target", min=1, max=max_positions)
    return {name: {0: batch, 1: target if name == "decoder_input_ids" else seq} for name in names}
