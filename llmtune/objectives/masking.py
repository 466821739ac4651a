"""BERT's dynamic masking: choose mask_prob of the real tokens; 80% [MASK], 10% random, 10% kept."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class MaskingSpec:
    mask_prob: float
    mask_token_frac: float
    random_token_frac: float
    mask_id: int
    vocab_size: int
    special_ids: tuple[int, ...]


def mask_tokens(
    input_ids: Tensor, spec: MaskingSpec, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Return (masked input ids, labels) where labels are -100 except at chosen positions."""
    draw = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    chosen = (draw < spec.mask_prob) & ~special_positions(input_ids, spec)
    return replace_chosen(input_ids, chosen, spec, generator)


def special_positions(input_ids: Tensor, spec: MaskingSpec) -> Tensor:
    """Where the special tokens ([CLS], [SEP], padding) are: never chosen as targets."""
    return torch.isin(input_ids, torch.tensor(spec.special_ids, device=input_ids.device))


def replace_chosen(
    input_ids: Tensor, chosen: Tensor, spec: MaskingSpec, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """(masked input ids, labels) for the `chosen` positions: each shows the model [MASK]
    (mask_token_frac), a random token (random_token_frac) or itself."""
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    # One more draw decides what each chosen position shows the model.
    action = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    to_mask = chosen & (action < spec.mask_token_frac)
    to_random = (
        chosen
        & (action >= spec.mask_token_frac)
        & (action < spec.mask_token_frac + spec.random_token_frac)
    )
    random_ids = torch.randint(
        spec.vocab_size, input_ids.shape, generator=generator, device=input_ids.device
    )
    masked = torch.where(to_mask, torch.full_like(input_ids, spec.mask_id), input_ids)
    masked = torch.where(to_random, random_ids, masked)
    return masked, labels
