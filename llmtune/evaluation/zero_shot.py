"""Zero/few-shot classification with a decoder: the predicted label is the one whose word,
appended after the filled prompt template, has the highest summed log-likelihood.

Prompt for each example: the few-shot block (k labelled training examples, each the filled
template, a space, its label word and a blank line) then the filled template of the example;
each candidate continuation is " <label word>". Sums, not means: label words are short, and
a mean would favour long words made of likely pieces.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tokenizers import Tokenizer

from llmtune.config.schema import EvaluateConfig
from llmtune.errors import DataError
from llmtune.evaluation.likelihood import score_sequences


@dataclass(frozen=True)
class LabelWords:
    """Label names in the data and the word that stands for each (same order)."""

    names: tuple[str, ...]
    words: tuple[str, ...]

    @classmethod
    def from_config(cls, cfg: EvaluateConfig) -> LabelWords:
        return cls(cfg.label_names or cfg.label_words, cfg.label_words)

    def index(self, label: Hashable, where: str) -> int:
        """Position of a data label: its name, or for an integer label, the index itself."""
        if str(label) in self.names:
            return self.names.index(str(label))
        if isinstance(label, int) and 0 <= label < len(self.words):
            return label
        raise DataError(
            f"{where}: label {label!r} is not one of evaluate.label_names "
            f"({', '.join(self.names)}); set evaluate.label_names to the data's labels"
        )


def fill(template: str, row: dict[str, Any]) -> str:
    """The template with {text} / {text_pair} from a row; other braces are left alone.

    A literal backslash-n means a newline: a command-line override cannot carry a real one.
    """
    template = template.replace("\\n", "\n")
    return template.replace("{text}", str(row.get("text", ""))).replace(
        "{text_pair}", str(row.get("text_pair", ""))
    )


def few_shot_block(
    rows: Sequence[dict[str, Any]], labels: LabelWords, cfg: EvaluateConfig, seed: int
) -> str:
    """k labelled examples drawn with `seed`, each followed by its label word."""
    if cfg.few_shot > len(rows):
        raise DataError(
            f"evaluate.few_shot={cfg.few_shot} but data.train has {len(rows)} examples; "
            "lower evaluate.few_shot"
        )
    picked = random.Random(seed).sample(list(rows), cfg.few_shot)
    parts = []
    for row in picked:
        word = labels.words[labels.index(row["label"], "data.train")]
        parts.append(f"{fill(cfg.template, row)} {word}\n\n")
    return "".join(parts)


def classify(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    labels: LabelWords,
    settings: tuple[int, int],
) -> tuple[list[int], list[list[float]]]:
    """Predicted label index and per-label log-likelihood for each prompt.

    `settings` = (pad id, batch size). The prompt keeps its end when prompt plus word would
    not fit in max_seq_len.
    """
    pad_id, batch_size = settings
    limit = model.config.max_seq_len
    words = [tokenizer.encode(f" {w}", add_special_tokens=False).ids for w in labels.words]
    if any(not w for w in words):
        raise DataError("evaluate.label_words: a label word tokenizes to nothing; use real words")
    sequences, n_scored = [], []
    for prompt in prompts:
        # an empty prompt still needs a token to predict the word's first piece from
        prompt_ids = tokenizer.encode(prompt, add_special_tokens=False).ids or [pad_id]
        for word in words:
            keep = max(1, limit - len(word))
            sequences.append([*prompt_ids[-keep:], *word][-limit:])
            n_scored.append(min(len(word), limit - 1))
    flat = score_sequences(model, sequences, n_scored, pad_id, batch_size)
    k = len(words)
    scores = [flat[i : i + k] for i in range(0, len(flat), k)]
    return [max(range(k), key=row.__getitem__) for row in scores], scores
