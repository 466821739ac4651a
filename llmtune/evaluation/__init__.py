"""Evaluation: metrics, generation with a KV cache, likelihood scoring, and the reports
that `llmtune evaluate` writes."""

from llmtune.evaluation.generation import Generation, filter_logits, generate, next_token
from llmtune.evaluation.likelihood import perplexity, score_sequences
from llmtune.evaluation.metrics import classification_report, entity_report, entity_spans
from llmtune.evaluation.zero_shot import LabelWords, classify

__all__ = [
    "Generation",
    "LabelWords",
    "classification_report",
    "classify",
    "entity_report",
    "entity_spans",
    "filter_logits",
    "generate",
    "next_token",
    "perplexity",
    "score_sequences",
]
