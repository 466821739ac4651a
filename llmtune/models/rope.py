"""Rotary position embeddings (RoPE) for the Llama family: the inverse frequencies of each
scaling variant (none, linear, dynamic NTK, llama3) and their rotation of queries and keys.

Nothing here is a parameter or a buffer: the tables are recomputed per forward pass (a few
thousand numbers), so they never enter a checkpoint and follow the input's device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from llmtune.errors import ConfigError

ROPE_TYPES = ("none", "linear", "dynamic", "llama3")


@dataclass(frozen=True)
class RopeScaling:
    """How rotary frequencies are stretched for a longer context than pretraining saw.

    linear: every frequency divided by `factor`. dynamic (NTK): once a sequence is longer than
    the model's `n_positions`, theta grows with the length. llama3: long wavelengths divided
    by `factor`, short ones kept, the band between `high_freq_factor` and `low_freq_factor`
    interpolated; `original_max_position_embeddings` is the pretraining context.
    """

    type: str = "none"  # none | linear | dynamic | llama3
    factor: float = 1.0  # linear, dynamic, llama3: how much longer the context gets
    low_freq_factor: float = 1.0  # llama3 only: wavelengths beyond context/low are divided
    high_freq_factor: float = 4.0  # llama3 only: wavelengths below context/high are kept
    original_max_position_embeddings: int = 0  # llama3 only: the pretraining context

    def __post_init__(self) -> None:
        if self.type not in ROPE_TYPES:
            raise ConfigError(
                f"model.rope_scaling.type='{self.type}' is unknown; "
                f"use one of {', '.join(ROPE_TYPES)}"
            )
        if self.type != "none" and self.factor <= 0:
            raise ConfigError(f"model.rope_scaling.factor must be > 0, got {self.factor}")
        if self.type == "llama3":
            if self.original_max_position_embeddings <= 0:
                raise ConfigError(
                    "model.rope_scaling.original_max_position_embeddings must be > 0 for llama3"
                )
            if self.high_freq_factor <= self.low_freq_factor:
                raise ConfigError(
                    "model.rope_scaling.high_freq_factor must exceed low_freq_factor for llama3"
                )


def inverse_frequencies(
    head_dim: int, theta: float, scaling: RopeScaling, n_positions: int, seq_len: int
) -> torch.Tensor:
    """[head_dim/2] fp32 rotation speeds, one per pair of channels.

    `seq_len` (the largest position + 1 in this forward) matters only to dynamic scaling,
    which leaves sequences within `n_positions` untouched.
    """
    if scaling.type == "dynamic" and seq_len > n_positions:
        f = scaling.factor
        theta = theta * ((f * seq_len / n_positions) - (f - 1)) ** (head_dim / (head_dim - 2))
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    inv_freq = 1.0 / (theta**exponents)
    if scaling.type == "linear":
        return inv_freq / scaling.factor
    if scaling.type == "llama3":
        return _llama3(inv_freq, scaling)
    return inv_freq


def _llama3(inv_freq: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    """Llama 3.1's piecewise rule: wavelengths beyond the pretraining context / low_freq_factor
    are slowed by `factor`, those under context / high_freq_factor kept, the rest blended."""
    context = s.original_max_position_embeddings
    wavelen = 2 * math.pi / inv_freq
    slowed = torch.where(wavelen > context / s.low_freq_factor, inv_freq / s.factor, inv_freq)
    smooth = (context / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    blended = (1 - smooth) * slowed / s.factor + smooth * slowed
    middle = (wavelen >= context / s.high_freq_factor) & (wavelen <= context / s.low_freq_factor)
    return torch.where(middle, blended, slowed)


def rotary_tables(
    inv_freq: torch.Tensor, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [B|1, 1, T, head_dim] (fp32) for integer `positions` [B|1, T].

    Each frequency appears twice, for the first and the second half of the head: the
    rotation pairs channel i with channel i + head_dim/2 (Hugging Face's layout; GGUF files
    interleave the pairs instead, which the GGUF import undoes).
    """
    angles = positions.float()[..., None] * inv_freq.to(positions.device)  # [B,T,hd/2]
    angles = torch.cat([angles, angles], dim=-1)  # [B,T,hd]
    return angles.cos()[:, None], angles.sin()[:, None]  # [B,1,T,hd]: broadcast over heads


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys x [B,H,T,hd] by the angles in cos/sin [B|1,1,T,hd]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    rotated_half = torch.cat([-x2, x1], dim=-1)
    return x * cos.to(x.dtype) + rotated_half * sin.to(x.dtype)
