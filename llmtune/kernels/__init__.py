"""CPU numerics kernels, kept out of the model code: cheaper dropout masks (dropout.py) and
bf16 products through fp32 on CPUs without bf16 units (bf16.py). Models are written with plain
torch layers; `apply_kernels` swaps the kernels into a built model, `bf16_products` wraps the
forward passes that need it (train/hardware.py does both)."""

from llmtune.kernels.bf16 import bf16_products, bf16_via_fp32
from llmtune.kernels.cpu_features import bf16_units, native_bf16_matmul
from llmtune.kernels.swap import apply_kernels

__all__ = [
    "apply_kernels",
    "bf16_products",
    "bf16_units",
    "bf16_via_fp32",
    "native_bf16_matmul",
]
