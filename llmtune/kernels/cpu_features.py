"""What this CPU's matrix units can do, asked once: the kernels choose their paths by it."""

from __future__ import annotations

import functools

import torch


@functools.cache  # a fact of the machine, asked on every forward pass
def native_bf16_matmul() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX tiles)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
