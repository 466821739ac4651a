"""Perplexity windows, scored-target batches and zero-shot label scoring against direct sums."""

from __future__ import annotations

import math

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from llmtune.config.schema import EvaluateConfig
from llmtune.errors import DataError
from llmtune.evaluation.likelihood import lm_windows, pad_batch, perplexity, score_sequences
from llmtune.evaluation.zero_shot import LabelWords, classify, few_shot_block, fill
from llmtune.models import build_model
from llmtune.models.gpt import GPTConfig

TINY = GPTConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=4, d_ff=64,
    max_seq_len=8, n_positions=16, layer_norm_eps=1e-5,
)  # fmt: skip


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(TINY, ["lm"]).eval()


@torch.no_grad()
def _direct_logprob(model, seq: list[int], n: int) -> float:
    """log p of the last n tokens of seq, from one plain forward."""
    logp = model.heads["lm"](model(torch.tensor([seq]))).log_softmax(-1)[0]
    return sum(float(logp[t - 1, seq[t]]) for t in range(len(seq) - n, len(seq)))


def test_windows_predict_every_target_once():
    windows = lm_windows([[1, 2, 3], list(range(10, 22))], eos_id=0, seq_len=5)
    assert windows[0] == [0, 1, 2, 3, 0]
    # [0, 10..21, 0] = 14 tokens, 13 targets: windows share one token
    assert windows[1:] == [[0, 10, 11, 12, 13], [13, 14, 15, 16, 17], [17, 18, 19, 20, 21], [21, 0]]
    assert sum(len(w) - 1 for w in windows[1:]) == 13


def test_pad_batch_marks_only_scored_tokens():
    ids, targets = pad_batch([[5, 6, 7], [8, 9]], [2, 1], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 9, 0]]
    assert targets.tolist() == [[6, 7], [9, -100]]


def test_scores_equal_direct_sums(model):
    seqs = [[1, 2, 3, 4, 5], [6, 7, 8], [9, 10]]
    got = score_sequences(model, seqs, [4, 1, 1], pad_id=0, batch_size=2)
    want = [_direct_logprob(model, s, n) for s, n in zip(seqs, [4, 1, 1])]
    assert got == pytest.approx(want, abs=1e-4)


def test_perplexity_is_token_weighted(model):
    docs = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12, 13]]  # the second needs two windows
    result = perplexity(model, docs, eos_id=0, batch_size=3)
    windows = lm_windows(docs, 0, TINY.max_seq_len)
    nll = -sum(_direct_logprob(model, w, len(w) - 1) for w in windows)
    assert result["n_tokens"] == 4 + 11 and result["n_examples"] == 2
    assert result["loss"] == pytest.approx(nll / 15, abs=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(nll / 15), rel=1e-4)


def _word_tokenizer() -> Tokenizer:
    vocab = {w: i for i, w in enumerate(["<eos>", "good", "bad", "film", "Answer:", "x", "y"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="x"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def test_classify_picks_the_likeliest_label_word(model):
    tok, labels = _word_tokenizer(), LabelWords(("neg", "pos"), ("bad", "good"))
    prompts = ["film Answer:", "bad film Answer:", ""]
    predicted, scores = classify(model, tok, prompts, labels, (0, 4))
    for prompt, row, pick in zip(prompts, scores, predicted):
        ids = tok.encode(prompt).ids or [0]
        want = [_direct_logprob(model, [*ids, w], 1) for w in (2, 1)]
        assert row == pytest.approx(want, abs=1e-4)
        assert pick == max(range(2), key=row.__getitem__)


def test_label_words_map_names_and_integer_labels():
    labels = LabelWords.from_config(EvaluateConfig(label_words=("bad", "good")))
    assert labels.names == ("bad", "good") and labels.index("good", "t") == 1
    assert labels.index(0, "t") == 0
    named = LabelWords(("0", "1"), ("bad", "good"))
    assert named.index(1, "t") == 1 and named.index("0", "t") == 0
    with pytest.raises(DataError, match="evaluate.label_names"):
        labels.index("meh", "data.test")


def test_template_and_few_shot_block():
    assert fill("{text} / {text_pair}?", {"text": "a", "text_pair": "b"}) == "a / b?"
    assert fill("{text}\\nLabel:", {"text": "a"}) == "a\nLabel:"  # as an override passes it
    rows = [{"text": "t1", "label": "pos"}, {"text": "t2", "label": "neg"}]
    labels = LabelWords(("neg", "pos"), ("bad", "good"))
    cfg = EvaluateConfig(template="{text} =", few_shot=2)
    block = few_shot_block(rows, labels, cfg, seed=0)
    assert sorted(block.split("\n\n")[:2]) == ["t1 = good", "t2 = bad"]
    with pytest.raises(DataError, match="evaluate.few_shot"):
        few_shot_block(rows, labels, EvaluateConfig(few_shot=3), seed=0)
