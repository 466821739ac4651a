"""Generative metrics on strings whose scores are worked out by hand."""

from __future__ import annotations

import pytest

from llmtune.evaluation.generative_metrics import generative_metrics, normalize_answer

pytest.importorskip("rouge_score")
pytest.importorskip("sacrebleu")


def test_identical_text_scores_full_marks():
    m = generative_metrics(["The cat sat on the mat."], ["The cat sat on the mat."])
    assert m["exact_match"] == 1.0
    assert m["rouge1"] == m["rouge2"] == m["rougeL"] == pytest.approx(1.0)
    assert m["bleu"] == pytest.approx(100.0) and m["chrf"] == pytest.approx(100.0)


def test_scores_worked_out_by_hand():
    m = generative_metrics(["the cat is on the mat"], ["the cat sat on the mat"])
    assert m["exact_match"] == 0.0
    assert m["rouge1"] == pytest.approx(5 / 6)  # 5 of 6 unigrams shared both ways
    assert m["rouge2"] == pytest.approx(3 / 5)  # the cat, on the, the mat
    assert m["rougeL"] == pytest.approx(5 / 6)  # LCS: the cat on the mat
    # BLEU: n-gram precisions 5/6, 3/5, 1/4, and 0/3 smoothed to 1/(2*3); brevity penalty 1
    assert m["bleu"] == pytest.approx(100 * (5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25)


def test_chrf_weights_recall_over_precision():
    """chrF's beta=2 favours recall, so a prediction that drops text scores lower than one
    that adds the same text: a check that predictions and references are not swapped."""
    short = generative_metrics(["the cat"], ["the cat sat down"])["chrf"]
    long = generative_metrics(["the cat sat down"], ["the cat"])["chrf"]
    assert 0 < short < long < 100


def test_exact_match_normalises_like_squad():
    assert normalize_answer("  The Eiffel-Tower!  ") == "eiffeltower"
    m = generative_metrics(["An apple.", "Paris", "no"], ["apple", "paris", "yes"])
    assert m["exact_match"] == pytest.approx(2 / 3) and m["n_examples"] == 3


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        generative_metrics(["a", "b"], ["a"])


def test_scoring_leaves_the_stderr_of_the_moment_open_when_logging_is_reconfigured(monkeypatch):
    """rouge-score's absl handler closed the sys.stderr it was imported under once Hydra
    reconfigured logging with another stderr in place (pytest's capture died with
    'I/O operation on closed file' after a second in-process evaluate)."""
    import io
    import logging.config

    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    generative_metrics(["a cat"], ["a cat"])
    monkeypatch.setattr("sys.stderr", io.StringIO())
    logging.config.dictConfig({"version": 1, "incremental": False})
    assert not stream.closed
