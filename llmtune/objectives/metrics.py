"""Classification and NER metrics, computed here rather than through sklearn or seqeval.

Classification: accuracy, precision/recall/F1 per class and macro, confusion matrix.
NER: entity spans with seqeval's default (lenient IOB2/BIOES) chunking, exact span + type match.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from typing import Any

Span = tuple[str, int, int]  # (entity type, first token, last token), inclusive


def _prf(tp: int, n_pred: int, n_true: int) -> dict[str, float]:
    """Precision, recall, F1; a ratio with a zero denominator is 0 (sklearn's zero_division=0)."""
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def classification_report(
    y_true: Sequence[Hashable], y_pred: Sequence[Hashable], labels: Sequence[Hashable] = ()
) -> dict[str, Any]:
    """Accuracy, macro and per-class P/R/F1, and the confusion matrix (rows true, cols predicted).

    `labels` fixes the order (e.g. the checkpoint's label names); labels seen in the data but
    not listed are appended. Macro averages run over the labels that occur in y_true or y_pred,
    as sklearn does by default, so a label the model never meets does not count as a zero.
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    order = list(dict.fromkeys([*labels, *sorted(set(y_true) | set(y_pred), key=str)]))
    index = {label: i for i, label in enumerate(order)}
    matrix = [[0] * len(order) for _ in order]
    for t, p in zip(y_true, y_pred):
        matrix[index[t]][index[p]] += 1
    true_counts, pred_counts = Counter(y_true), Counter(y_pred)
    per_class = {}
    for label in order:
        tp = matrix[index[label]][index[label]]
        scores = _prf(tp, pred_counts[label], true_counts[label])
        per_class[str(label)] = {**scores, "support": true_counts[label]}
    present = [str(label) for label in order if true_counts[label] or pred_counts[label]]
    n = len(y_true)
    report: dict[str, Any] = {
        "n_examples": n,
        "accuracy": sum(t == p for t, p in zip(y_true, y_pred)) / n if n else 0.0,
    }
    for key in ("precision", "recall", "f1"):
        values = [per_class[label][key] for label in present]
        report[f"{key}_macro"] = sum(values) / len(values) if values else 0.0
    report["per_class"] = per_class
    report["confusion_matrix"] = {"labels": [str(x) for x in order], "matrix": matrix}
    return report


def _split_tag(tag: str) -> tuple[str, str]:
    """'B-PER' -> ('B', 'PER'); 'O' -> ('O', '_'), as seqeval reads prefix-style tags."""
    return tag[:1], tag[1:].split("-", maxsplit=1)[-1] or "_"


def _ends(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """Does the chunk open at the previous token end before this one? (seqeval's end_of_chunk)"""
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag not in ("O", ".") and prev_type != type_


def _starts(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """Does a chunk start at this token? An I- or E- after O or another type starts one."""
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag not in ("O", ".") and prev_type != type_


def entity_spans(tags: Sequence[str]) -> list[Span]:
    """Entity chunks of one tag sequence (IOB2, IOB1 or BIOES), with seqeval's lenient rules:
    an I- without a B- opens an entity, and a change of type closes one."""
    spans: list[Span] = []
    prev_tag, prev_type, begin = "O", "", 0
    for i, tag in enumerate([*tags, "O"]):  # a final O closes an entity running to the end
        prefix, type_ = _split_tag(tag)
        if _ends(prev_tag, prefix, prev_type, type_):
            spans.append((prev_type, begin, i - 1))
        if _starts(prev_tag, prefix, prev_type, type_):
            begin = i
        prev_tag, prev_type = prefix, type_
    return spans


def entity_report(
    true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]
) -> dict[str, Any]:
    """Entity-level P/R/F1 (micro over all entities, and per type): a predicted entity counts
    only when its span and type both match a true one exactly."""
    if len(true_tags) != len(pred_tags):
        raise ValueError(f"{len(true_tags)} true sequences but {len(pred_tags)} predicted")
    true_set: set[tuple[int, str, int, int]] = set()
    pred_set: set[tuple[int, str, int, int]] = set()
    for n, (t, p) in enumerate(zip(true_tags, pred_tags)):
        if len(t) != len(p):
            raise ValueError(f"sequence {n}: {len(t)} true tags but {len(p)} predicted")
        true_set.update((n, *span) for span in entity_spans(t))
        pred_set.update((n, *span) for span in entity_spans(p))
    hits = true_set & pred_set
    overall = _prf(len(hits), len(pred_set), len(true_set))
    per_type = {}
    for type_ in sorted({e[1] for e in true_set | pred_set}):
        count = Counter(e[1] == type_ for e in hits)[True]
        n_pred = sum(e[1] == type_ for e in pred_set)
        n_true = sum(e[1] == type_ for e in true_set)
        per_type[type_] = {**_prf(count, n_pred, n_true), "support": n_true}
    n_tokens = sum(len(t) for t in true_tags)
    correct = sum(a == b for t, p in zip(true_tags, pred_tags) for a, b in zip(t, p))
    return {
        "n_examples": len(true_tags),
        "entity_precision": overall["precision"],
        "entity_recall": overall["recall"],
        "entity_f1": overall["f1"],
        "token_accuracy": correct / n_tokens if n_tokens else 0.0,
        "per_type": per_type,
    }
