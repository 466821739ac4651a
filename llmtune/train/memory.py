"""Memory a training run needs per device, estimated from the config alone (for `llmtune plan`).

Weights, gradients and AdamW state follow from the parameter count; activations are the
tensors autograd saves for backward, counted per layer from B, T, d, heads, d_ff and dtype.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from llmtune.config.schema import ModelConfig
from llmtune.objectives.chunked_ce import CHUNK_ELEMENTS

# A CPU process holding torch, tokenizers and datasets, before any model (measured ~0.5 GiB).
CPU_RUNTIME_BYTES = 600 * 2**20


@dataclass(frozen=True)
class ActivationShape:
    """What the saved activations depend on besides the model: one micro-batch's shape."""

    batch: int  # micro-batch rows
    seq_len: int
    half: bool  # bf16/fp16 autocast: matmul outputs stored in 2 bytes
    flash: bool  # SDPA's fused kernel (no [T, T] scores kept); the CPU keeps them with dropout
    # CPU bf16 without bf16 units (kernels/bf16.py): attention runs on fp32 copies of q, k, v
    half_via_fp32: bool = False
    checkpointing: bool = False  # hardware.activation_checkpointing: keep block inputs only
    lm_rows_share: float = 1.0  # share of positions projected onto the vocabulary
    fused_lm_loss: bool = True  # lm head: chunked projection + loss (objectives/chunked_ce.py)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per device, by what holds them."""

    weights: int
    gradients: int
    optimizer: int
    activations: int  # transformer blocks and embeddings
    head: int  # vocabulary projection and loss
    runtime: int  # the framework itself (CPU only)

    @property
    def total(self) -> int:
        return (
            self.weights
            + self.gradients
            + self.optimizer
            + self.activations
            + self.head
            + self.runtime
        )


def layer_activation_bytes(cfg: ModelConfig, shape: ActivationShape) -> int:
    """Bytes one block saves for backward.

    Per token: the residual input and the LayerNorm input stay fp32 (2d); q, k, v, attention
    output, the projection input and the MLP input are matmul operands (6d), the MLP hidden
    twice (before and after GELU, 2 d_ff); dropout keeps two 1-byte masks of d. Without SDPA's
    fused kernel [B, H, T, T] weights stay too: in fp32 (kernels/dropout.py) the fp32 softmax and
    a 1-byte keep mask; in bf16 (SDPA's unfused path) the softmax, mask and dropped weights.
    bf16 through fp32 products keeps q, k, v in fp32, the fp32 attention path's weights, and
    with SDPA's fused kernel its fp32 output besides the bf16 copy the projection keeps.
    """
    tokens = shape.batch * shape.seq_len
    act = 2 if shape.half else 4
    d, ff = cfg.d_model, cfg.d_ff
    per_token = 2 * d * 4 + 6 * d * act + 2 * ff * act
    if shape.half_via_fp32:
        per_token += 3 * d * 2 + (d * 4 if shape.flash else 0)
    if cfg.dropout > 0:
        per_token += 2 * d
    scores = 0
    if not shape.flash:
        bytes_per_weight = 3 * 4 if shape.half and not shape.half_via_fp32 else 4 + 1
        scores = bytes_per_weight * shape.batch * cfg.n_heads * shape.seq_len**2
    return tokens * per_token + scores


def head_activation_bytes(cfg: ModelConfig, shape: ActivationShape) -> int:
    """Bytes of the vocabulary projection and loss at their peak."""
    rows = int(shape.batch * shape.seq_len * shape.lm_rows_share)
    v, d = cfg.vocab_size, cfg.d_model
    if shape.fused_lm_loss:
        # gradients made during the forward (hidden and a full fp32 weight-sized one) plus
        # one chunk of logits
        return rows * d * 4 + v * d * 4 + min(rows, max(1, CHUNK_ELEMENTS // v)) * v * 4
    # logits, their log-softmax and their gradient, fp32; BERT's transform on those rows
    return 3 * rows * v * 4 + 4 * rows * d * 4


def activation_bytes(cfg: ModelConfig, shape: ActivationShape) -> int:
    """Saved activations of all blocks plus embeddings and final norm (no head)."""
    tokens = shape.batch * shape.seq_len
    embeddings = 3 * tokens * cfg.d_model * 4  # embedding sum, its dropout/norm, final norm
    layer = layer_activation_bytes(cfg, shape)
    if shape.checkpointing:
        # each block keeps only its input; one block's activations exist again in backward
        return embeddings + cfg.n_layers * tokens * cfg.d_model * 4 + layer
    return embeddings + cfg.n_layers * layer


def estimate_memory(
    cfg: ModelConfig, n_params: int, n_trainable: int, shape: ActivationShape, device: str
) -> MemoryEstimate:
    """Per-device memory of a training step: fp32 master weights (plus half copies under
    autocast), fp32 gradients, AdamW's two fp32 moments, activations and the head."""
    weights = n_params * 4 + (n_params * 2 if shape.half else 0)
    return MemoryEstimate(
        weights=weights,
        gradients=n_trainable * 4,
        optimizer=n_trainable * 8,
        activations=activation_bytes(cfg, shape),
        head=head_activation_bytes(cfg, shape),
        runtime=CPU_RUNTIME_BYTES if device == "cpu" else 0,
    )


def available_memory(device: torch.device) -> int | None:
    """Free bytes on the device: MemAvailable for the CPU, cudaMemGetInfo for a GPU."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def gib(n_bytes: float) -> str:
    """Human-readable size: '1.23 GiB' or '456 MiB'."""
    if n_bytes >= 2**30:
        return f"{n_bytes / 2**30:.2f} GiB"
    return f"{n_bytes / 2**20:.0f} MiB"
