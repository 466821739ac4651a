"""Slow: pretraining on real Wikipedia text from the shared data folder lowers perplexity."""

from __future__ import annotations

import pytest

from tests.conftest import real_data
from tests.e2e.helpers import metrics, pretrain

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "model",
    [
        ["model=gpt-tiny", "model.max_seq_len=64"],
        ["model=bert-tiny", "model.max_seq_len=64", "objective=mlm"],
    ],
)
def test_wikipedia_pretraining_lowers_validation_perplexity(tmp_path, model):
    wiki = real_data("corpus", "wiki_articles.jsonl")
    run = tmp_path / "run"
    pretrain(
        run,
        wiki,
        *model,
        "tokenizer.vocab_size=4000",
        "train.max_steps=150",
        "train.global_batch_size=16",
        "train.micro_batch_size=16",
        "train.eval_every=50",
        "train.eval_batches=10",
        "train.log_every=10",
        "optim.lr=1e-3",
        "optim.warmup_steps=10",
    )
    _, evals = metrics(run)
    ppl = [e["val_perplexity"] for e in evals]
    assert len(ppl) == 3
    # An untrained model sits near the vocabulary size (4000); learning takes it far below,
    # and every evaluation improves on the one before.
    assert ppl[-1] < 0.3 * 4000, ppl
    assert all(a > b for a, b in zip(ppl, ppl[1:])), ppl
