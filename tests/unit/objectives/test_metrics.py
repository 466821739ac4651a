"""Classification and entity metrics against hand-computed values, including edge cases."""

from __future__ import annotations

import pytest

from llmtune.objectives.metrics import classification_report, entity_report, entity_spans


def test_classification_hand_computed():
    y_true = ["a", "a", "a", "b", "b", "c"]
    y_pred = ["a", "a", "b", "b", "c", "c"]
    r = classification_report(y_true, y_pred, ["a", "b", "c"])
    assert r["accuracy"] == pytest.approx(4 / 6)
    # a: P 2/2 R 2/3; b: P 1/2 R 1/2; c: P 1/2 R 1/1
    assert r["per_class"]["a"]["precision"] == 1.0
    assert r["per_class"]["a"]["recall"] == pytest.approx(2 / 3)
    assert r["per_class"]["a"]["f1"] == pytest.approx(0.8)
    assert r["per_class"]["c"]["f1"] == pytest.approx(2 / 3)
    assert r["precision_macro"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert r["recall_macro"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    assert r["f1_macro"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert r["confusion_matrix"] == {
        "labels": ["a", "b", "c"],
        "matrix": [[2, 1, 0], [0, 1, 1], [0, 0, 1]],
    }
    assert r["n_examples"] == 6
    assert r["per_class"]["a"]["support"] == 3


def test_class_never_predicted_scores_zero_not_nan():
    r = classification_report(["x", "y", "y"], ["y", "y", "y"], ["x", "y"])
    assert r["per_class"]["x"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert r["per_class"]["y"]["precision"] == pytest.approx(2 / 3)
    assert r["f1_macro"] == pytest.approx((0 + 0.8) / 2)


def test_label_absent_from_data_is_listed_but_not_averaged():
    r = classification_report([0, 1], [0, 1], [0, 1, 2])
    assert r["confusion_matrix"]["labels"] == ["0", "1", "2"]
    assert r["f1_macro"] == 1.0 and r["per_class"]["2"]["support"] == 0


def test_empty_and_mismatched_inputs():
    assert classification_report([], [])["accuracy"] == 0.0
    with pytest.raises(ValueError):
        classification_report(["a"], [])


@pytest.mark.parametrize(
    ("tags", "spans"),
    [
        (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 1), ("LOC", 3, 3)]),
        (["I-PER", "I-PER", "O"], [("PER", 0, 1)]),  # I- without B- opens an entity
        (["O", "I-LOC"], [("LOC", 1, 1)]),
        (["B-PER", "I-LOC"], [("PER", 0, 0), ("LOC", 1, 1)]),  # a type change splits
        (["B-PER", "B-PER"], [("PER", 0, 0), ("PER", 1, 1)]),
        (["B-ORG", "I-ORG", "I-ORG"], [("ORG", 0, 2)]),  # runs to the end
        (["O", "O"], []),
        ([], []),
        (["S-PER", "B-LOC", "E-LOC"], [("PER", 0, 0), ("LOC", 1, 2)]),  # BIOES
        (["B-creative-work", "I-creative-work"], [("creative-work", 0, 1)]),
    ],
)
def test_entity_spans_follow_seqeval(tags, spans):
    assert entity_spans(tags) == spans


def test_entity_report_hand_computed():
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "B-LOC"]]
    # true {PER 0-1, LOC 3, ORG 0}; pred {PER 0-1, ORG 3, ORG 0, LOC 1}: 2 hits of 4 / 3
    r = entity_report(true, pred)
    assert r["entity_precision"] == pytest.approx(2 / 4)
    assert r["entity_recall"] == pytest.approx(2 / 3)
    assert r["entity_f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert r["per_type"]["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert r["per_type"]["ORG"]["precision"] == pytest.approx(0.5)
    assert r["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert r["token_accuracy"] == pytest.approx(4 / 6)


def test_partial_span_is_a_miss():
    r = entity_report([["B-PER", "I-PER"]], [["B-PER", "O"]])
    assert r["entity_f1"] == 0.0 and r["entity_recall"] == 0.0


def test_empty_entity_sets():
    r = entity_report([["O", "O"]], [["O", "O"]])
    assert r["entity_f1"] == 0.0 and r["per_type"] == {} and r["token_accuracy"] == 1.0
    r = entity_report([["O"]], [["B-PER"]])
    assert r["entity_precision"] == 0.0 and r["per_type"]["PER"]["support"] == 0
    with pytest.raises(ValueError):
        entity_report([["O"]], [["O", "O"]])
