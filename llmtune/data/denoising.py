"""BART's denoising noise (Lewis et al. 2020, section 2.2) on token ids: sentence permutation,
then text infilling; the target is the original text.

Text infilling masks `mask_ratio` of the tokens in spans whose lengths are drawn from a
Poisson(`poisson_lambda`) distribution; each span becomes ONE mask token, and a 0-length span
inserts a mask, so the model must also learn how many tokens are missing.
"""

from __future__ import annotations

from collections.abc import Collection

import torch

MASK_RATIO = 0.3
POISSON_LAMBDA = 3.0


def permute_sentences(
    tokens: torch.Tensor, sentence_end_ids: Collection[int], generator: torch.Generator
) -> torch.Tensor:
    """The sentences of `tokens` (each ends at a token of `sentence_end_ids`, or at the end)
    in a random order."""
    ends = [i + 1 for i, t in enumerate(tokens.tolist()) if t in sentence_end_ids]
    bounds = [0, *[e for e in ends if e < len(tokens)], len(tokens)]
    sentences = [tokens[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    order = torch.randperm(len(sentences), generator=generator).tolist()
    return torch.cat([sentences[i] for i in order])


def _span_lengths(n_masked: int, poisson_lambda: float, generator: torch.Generator) -> list[int]:
    """Poisson span lengths drawn until they cover `n_masked` tokens; the last is cut to fit."""
    lengths: list[int] = []
    while sum(lengths) < n_masked:
        rate = torch.tensor([poisson_lambda])
        lengths.append(int(torch.poisson(rate, generator=generator)))
    if lengths:
        lengths[-1] -= sum(lengths) - n_masked
    return lengths


def text_infilling(
    tokens: torch.Tensor,
    mask_id: int,
    generator: torch.Generator,
    mask_ratio: float = MASK_RATIO,
    poisson_lambda: float = POISSON_LAMBDA,
) -> torch.Tensor:
    """`tokens` with round(len * mask_ratio) of them removed in Poisson-length spans, each
    span (0-length ones included) replaced by one `mask_id`; spans never overlap."""
    n = len(tokens)
    lengths = _span_lengths(round(n * mask_ratio), poisson_lambda, generator)
    kept = n - sum(lengths)
    # each span goes after a random number of kept tokens (sorted: spans keep their order)
    gaps = torch.randint(0, kept + 1, (len(lengths),), generator=generator).sort().values.tolist()
    out: list[int] = []
    source = tokens.tolist()
    pos = kept_seen = 0
    for gap, length in zip(gaps, lengths):
        take = gap - kept_seen
        out += source[pos : pos + take] + [mask_id]
        pos, kept_seen = pos + take + length, gap
    out += source[pos:]
    return torch.tensor(out, dtype=tokens.dtype)


def bart_noise(
    tokens: torch.Tensor,
    mask_id: int,
    sentence_end_ids: Collection[int],
    generator: torch.Generator,
    mask_ratio: float = MASK_RATIO,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(noised input, target): sentences permuted then infilled; the target is `tokens`."""
    shuffled = permute_sentences(tokens, sentence_end_ids, generator)
    return text_infilling(shuffled, mask_id, generator, mask_ratio), tokens.clone()
