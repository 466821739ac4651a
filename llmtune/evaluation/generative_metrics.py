"""Metrics for generated text against references: exact match, ROUGE-1/2/L, BLEU, chrF.

ROUGE comes from Google's `rouge-score`, BLEU and chrF from `sacrebleu` (the `metrics`
extra); each keeps the library's own scale: rouge* are mean F-measures in [0, 1], bleu and
chrf corpus-level scores in [0, 100], exact_match a fraction in [0, 1].
"""

from __future__ import annotations

import re
import string
import sys
from collections.abc import Sequence
from typing import Any

from llmtune.errors import ConfigError

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION))
    return " ".join(text.split())


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of predictions equal to their reference after `normalize_answer`."""
    if not predictions:
        return 0.0
    hits = sum(normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references))
    return hits / len(predictions)


def _libraries() -> tuple[Any, Any]:
    try:
        import sacrebleu
        from absl import logging as absl_logging
        from rouge_score import rouge_scorer
    except ImportError:
        raise ConfigError(
            "generative metrics need rouge-score and sacrebleu: pip install 'llmtune[metrics]'"
        ) from None
    # rouge-score imports absl, whose (unattached) handler keeps the sys.stderr of that moment
    # and closes it when logging is reconfigured (Hydra does, per command) if sys.stderr has
    # been swapped since (a run log's tee, pytest's capture): give it the process's own
    # stderr, which it never closes
    absl_logging.get_absl_handler().python_handler.stream = sys.__stderr__
    return rouge_scorer, sacrebleu


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure over examples (rouge-score's tokenizer: lower-cased ASCII
    letters and digits, Porter-stemmed, as the T5 and Hugging Face summarisation scripts)."""
    rouge_scorer, _ = _libraries()
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for pred, ref in zip(predictions, references):
        scores = scorer.score(ref, pred)  # rouge-score takes (target, prediction)
        for key in ROUGE_TYPES:
            totals[key] += scores[key].fmeasure
    n = max(len(predictions), 1)
    return {key: total / n for key, total in totals.items()}


def generative_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """exact_match, rouge1, rouge2, rougeL, bleu (sacrebleu's 13a tokenisation, exponential
    smoothing), chrf (character 6-grams, beta 2) and n_examples for paired strings."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    _, sacrebleu = _libraries()
    preds, refs = list(predictions), [list(references)]
    return {
        "n_examples": len(preds),
        "exact_match": exact_match(preds, refs[0]),
        **rouge(preds, refs[0]),
        "bleu": sacrebleu.corpus_bleu(preds, refs).score if preds else 0.0,
        "chrf": sacrebleu.corpus_chrf(preds, refs).score if preds else 0.0,
    }
