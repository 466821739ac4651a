"""BART noise: sentence permutation keeps the sentences, text infilling masks 30% of the
tokens in Poisson(3) spans, one mask token per span."""

from __future__ import annotations

import torch

from llmtune.data.denoising import bart_noise, permute_sentences, text_infilling

MASK, DOT = 0, 1


def _is_subsequence(short: list[int], long: list[int]) -> bool:
    it = iter(long)
    return all(x in it for x in short)


def test_text_infilling_masks_the_ratio_in_poisson_spans():
    gen = torch.Generator().manual_seed(0)
    tokens = torch.arange(10, 210)  # 200 tokens, none of them the mask id
    n_spans, n_masked = 0, 0
    for _ in range(200):
        out = text_infilling(tokens, MASK, gen).tolist()
        kept = [t for t in out if t != MASK]
        spans = out.count(MASK)
        assert len(kept) == 200 - 60  # exactly round(0.3 * 200) tokens dropped
        assert _is_subsequence(kept, tokens.tolist())  # the rest keeps its order
        n_spans += spans
        n_masked += 60
    # Poisson(3) spans (0-length ones insert a mask): about 60/3 = 20 spans per sequence
    assert abs(n_masked / n_spans - 3.0) < 0.25


def test_zero_length_spans_insert_a_mask():
    gen = torch.Generator().manual_seed(1)
    tokens = torch.arange(10, 410)
    lengths_seen = set()
    for _ in range(20):
        out = text_infilling(tokens, MASK, gen).tolist()
        # a mask between two tokens that were adjacent in the input covers nothing
        for i in range(1, len(out) - 1):
            if out[i] == MASK and MASK not in (out[i - 1], out[i + 1]):
                lengths_seen.add(out[i + 1] - out[i - 1] - 1)
    assert 0 in lengths_seen and max(lengths_seen) >= 5


def _contains_block(block: list[int], seq: list[int]) -> bool:
    return any(seq[i : i + len(block)] == block for i in range(len(seq) - len(block) + 1))


def test_sentence_permutation_keeps_every_sentence_whole():
    tokens = torch.tensor([5, 6, DOT, 7, DOT, 8, 9, 10, DOT, 11, 12])  # the last has no end
    sentences = [[5, 6, DOT], [7, DOT], [8, 9, 10, DOT], [11, 12]]
    orders = set()
    for seed in range(20):
        out = permute_sentences(tokens, {DOT}, torch.Generator().manual_seed(seed)).tolist()
        assert len(out) == len(tokens)
        assert all(_contains_block(sentence, out) for sentence in sentences)
        orders.add(tuple(out))
    assert len(orders) > 5  # 4! = 24 orders possible


def test_bart_noise_targets_the_original():
    tokens = torch.tensor([5, 6, DOT, 7, 8, DOT, 9, 10, 11, 12, DOT])
    inputs, targets = bart_noise(tokens, MASK, {DOT}, torch.Generator().manual_seed(0))
    assert torch.equal(targets, tokens)
    assert MASK in inputs.tolist() and len(inputs) < len(tokens)
