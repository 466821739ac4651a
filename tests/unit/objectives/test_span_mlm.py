"""span_mlm (SpanBERT's masking): whole spans become targets, mask_prob of each row's real
tokens, never special tokens (the CLI side: tests/e2e/test_span_mlm.py)."""

from __future__ import annotations

import torch

from llmtune.objectives.masking import MaskingSpec, mask_tokens
from llmtune.objectives.span_mlm import choose_spans, span_lengths

SPECIALS = (0, 1, 2, 3, 4)


def _rows(n: int = 64, width: int = 96) -> torch.Tensor:
    ids = torch.randint(5, 1000, (n, width), generator=torch.Generator().manual_seed(0))
    ids[:, 0], ids[:, -8:] = 2, 0  # [CLS] ... [PAD]
    return ids


def _runs(chosen: torch.Tensor) -> list[int]:
    """Lengths of the runs of consecutive chosen positions."""
    lengths = []
    for row in chosen.tolist():
        run = 0
        for c in [*row, False]:
            if c:
                run += 1
            elif run:
                lengths.append(run)
                run = 0
    return lengths


def test_spans_cover_the_share_of_real_tokens_and_skip_specials():
    ids = _rows()
    real = ~torch.isin(ids, torch.tensor(SPECIALS))
    chosen = choose_spans(real, 0.15, 3.0, 10, torch.Generator().manual_seed(1))
    assert not (chosen & ~real).any()
    per_row = chosen.sum(1)
    assert torch.equal(per_row, (real.sum(1).float() * 0.15).round().long())
    # spans, not single tokens: BERT's token masking at the same share runs ~1.2 long
    spec = MaskingSpec(0.15, 0.8, 0.1, 4, 1000, SPECIALS)
    single = mask_tokens(ids, spec, torch.Generator().manual_seed(1))[1] != -100
    spans, singles = _runs(chosen), _runs(single)
    assert sum(spans) / len(spans) > 2.0 > 1.3 > sum(singles) / len(singles)


def test_span_lengths_are_geometric_and_clipped():
    lengths = torch.tensor(span_lengths(20000, 3.0, 10, torch.Generator().manual_seed(0)))
    assert lengths.min() == 1 and lengths.max() == 10
    # a geometric of mean 3 clipped at 10 has mean 3 x (1 - (2/3)^10) = 2.948
    assert abs(lengths.float().mean().item() - 2.948) < 0.05
    assert span_lengths(5, 1.0, 10, torch.Generator()) == [1] * 5


def test_spans_are_reproducible_per_generator_seed():
    real = _rows() > 4
    a = choose_spans(real, 0.15, 3.0, 10, torch.Generator().manual_seed(5))
    b = choose_spans(real, 0.15, 3.0, 10, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
