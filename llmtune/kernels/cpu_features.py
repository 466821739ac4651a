"""What this CPU's matrix units can do, asked once: the kernels choose their paths by it."""

from __future__ import annotations

import functools

import torch

_UNITS = {"AMX": "_is_amx_tile_supported", "AVX512-BF16": "_is_avx512_bf16_supported"}


@functools.cache  # a fact of the machine
def bf16_units() -> str | None:
    """The bf16 matrix units this CPU has, best first (AMX tiles, AVX512-BF16), or None."""
    for units, check in _UNITS.items():
        if getattr(torch.cpu, check, lambda: False)():
            return units
    return None


@functools.cache  # asked on every forward pass
def native_bf16_matmul() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX tiles)."""
    return bf16_units() is not None
