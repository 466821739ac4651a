"""Span corruption against the T5 recipe: lengths, sentinels, span counts and lengths, density."""

from __future__ import annotations

import pytest
import torch

from llmtune.data.span_corruption import (
    corrupt_spans,
    noise_mask,
    sentinel_ids,
    sentinel_tokens,
    span_corruption_lengths,
    stream_chunks,
)
from llmtune.errors import ConfigError

VOCAB, EOS = 32100, 1
SENTINELS = sentinel_ids(VOCAB)


def _runs(mask: torch.Tensor, value: bool) -> list[int]:
    """Lengths of the runs of `value` in a boolean vector."""
    runs, n = [], 0
    for flag in mask.tolist():
        if flag == value:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    return runs + ([n] if n else [])


def test_lengths_follow_t5s_arithmetic():
    # T5's random_spans_helper: inputs 512 need 568 raw tokens and give 114-token targets
    assert span_corruption_lengths(512) == (568, 114)
    for inputs_length in (16, 64, 128, 512, 1024):
        n_tokens, targets_length = span_corruption_lengths(inputs_length)
        gen = torch.Generator().manual_seed(inputs_length)
        inputs, targets = corrupt_spans(torch.arange(100, 100 + n_tokens), SENTINELS, EOS, gen)
        assert len(inputs) == inputs_length  # packed inputs fill the model's length exactly
        assert len(targets) == targets_length


def test_sentinels_count_down_from_the_top_of_the_vocabulary():
    assert SENTINELS[:3] == [32099, 32098, 32097]
    tokens = sentinel_tokens()
    # added in this order to a vocabulary of 32000, <extra_id_0> lands on 32099 as in T5
    assert tokens[-1] == "<extra_id_0>" and tokens[0] == "<extra_id_99>"
    assert {32000 + i: t for i, t in enumerate(tokens)}[32099] == "<extra_id_0>"


def test_inputs_and_targets_rebuild_the_text_and_name_spans_in_order():
    n_tokens, _ = span_corruption_lengths(512)
    tokens = torch.arange(100, 100 + n_tokens)
    inputs, targets = corrupt_spans(tokens, SENTINELS, EOS, torch.Generator().manual_seed(0))
    assert inputs[-1] == EOS and targets[-1] == EOS
    in_sent = [t for t in inputs.tolist() if t in SENTINELS]
    out_sent = [t for t in targets.tolist() if t in SENTINELS]
    n_spans = round(round(n_tokens * 0.15) / 3)
    assert in_sent == out_sent == SENTINELS[:n_spans]
    assert inputs[0] not in SENTINELS and targets[0] == SENTINELS[0]  # a kept span comes first
    # put each dropped span back in place of its sentinel: the original text returns
    spans, current = {}, None
    for t in targets[:-1].tolist():
        if t in SENTINELS:
            current = t
            spans[current] = []
        else:
            spans[current].append(t)
    rebuilt = [x for t in inputs[:-1].tolist() for x in (spans[t] if t in SENTINELS else [t])]
    assert rebuilt == tokens.tolist()


def test_noise_density_and_span_lengths_follow_the_recipe():
    gen = torch.Generator().manual_seed(1)
    length = 568
    noise_runs, kept_runs = [], []
    for _ in range(300):
        mask = noise_mask(length, 0.15, 3.0, gen)
        assert int(mask.sum()) == round(length * 0.15)  # density is exact, not on average
        assert not mask[0]  # starts with kept tokens, ends with noise (as T5)
        noise_runs += _runs(mask, True)
        kept_runs += _runs(mask, False)
        assert len(_runs(mask, True)) == round(85 / 3) == 28
    assert sum(noise_runs) / len(noise_runs) == pytest.approx(85 / 28)  # mean span ~3
    # spans are a uniform random composition: lengths vary, 1 is the most common length
    counts = torch.bincount(torch.tensor(noise_runs))
    assert counts.argmax() == 1 and max(noise_runs) >= 10
    assert sum(kept_runs) / len(kept_runs) == pytest.approx((length - 85) / 28)


def test_corruption_follows_its_generator():
    tokens = torch.arange(100, 241)
    a = corrupt_spans(tokens, SENTINELS, EOS, torch.Generator().manual_seed(3))
    b = corrupt_spans(tokens, SENTINELS, EOS, torch.Generator().manual_seed(3))
    c = corrupt_spans(tokens, SENTINELS, EOS, torch.Generator().manual_seed(4))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_too_few_sentinels_is_a_config_error():
    with pytest.raises(ConfigError, match="sentinel"):
        corrupt_spans(torch.arange(100, 668), SENTINELS[:5], EOS, torch.Generator())
    with pytest.raises(ConfigError, match="at least 3"):
        span_corruption_lengths(2)


def test_stream_chunks_joins_documents_with_eos_and_drops_the_tail():
    docs = [[5, 6, 7], [8], [9, 10, 11, 12]]
    assert list(stream_chunks(docs, 4, EOS)) == [[5, 6, 7, 1], [8, 1, 9, 10]]
