"""Dynamic masking picks ~mask_prob of real tokens, never specials, and splits 80/10/10."""

from __future__ import annotations

import torch

from llmtune.objectives.masking import MaskingSpec, mask_tokens

SPEC = MaskingSpec(
    mask_prob=0.15,
    mask_token_frac=0.8,
    random_token_frac=0.1,
    mask_id=4,
    vocab_size=1000,
    special_ids=(0, 1, 2, 3, 4),
)


def test_masking_statistics():
    ids = torch.randint(5, 1000, (256, 128))
    ids[:, 0] = 2  # [CLS]
    ids[:, -1] = 0  # [PAD]
    masked, labels = mask_tokens(ids, SPEC, torch.Generator().manual_seed(0))
    chosen = labels != -100
    real = ids.numel() - 2 * ids.shape[0]
    assert abs(chosen.sum().item() / real - 0.15) < 0.01
    assert not chosen[:, 0].any() and not chosen[:, -1].any()
    assert torch.equal(labels[chosen], ids[chosen])
    as_mask = (masked == 4) & chosen
    unchanged = (masked == ids) & chosen
    n = chosen.sum().item()
    assert abs(as_mask.sum().item() / n - 0.8) < 0.02
    # Unchanged = the 10% kept plus random draws that hit the same id (~0.1%).
    assert abs(unchanged.sum().item() / n - 0.1) < 0.02
    assert torch.equal(masked[~chosen], ids[~chosen])


def test_masking_is_reproducible_per_generator_seed():
    ids = torch.randint(5, 1000, (8, 64))
    a = mask_tokens(ids, SPEC, torch.Generator().manual_seed(3))
    b = mask_tokens(ids, SPEC, torch.Generator().manual_seed(3))
    c = mask_tokens(ids, SPEC, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
