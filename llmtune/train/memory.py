"""Memory a training run needs per device, estimated from the config alone (for `llmtune plan`).

Weights, gradients and AdamW state follow from the parameter count; activations are the
tensors autograd saves for backward, counted per layer from B, T, d, heads, d_ff and dtype
(a GELU block for GPT-2/BERT, a SwiGLU block with grouped keys/values for the Llama family).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from llmtune.config.schema import ModelConfig
from llmtune.models.family import Kind
from llmtune.models.registry import family
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
    """Bytes one block saves for backward: per token (GELU or SwiGLU block, below), plus the
    attention weights when SDPA's fused kernel does not run.

    Dropout keeps two 1-byte masks of d. Without SDPA's fused kernel [B, H, T, T] weights
    stay too (kernels/dropout.py): the softmax and a 1-byte keep mask, the softmax in fp32,
    or in bf16 under bf16 autocast on a CPU with bf16 units. bf16 through fp32 products
    keeps q, k, v in fp32, the fp32 attention path's weights, and with SDPA's fused kernel its
    fp32 output besides the bf16 copy the projection keeps.
    """
    tokens = shape.batch * shape.seq_len
    act = 2 if shape.half else 4
    d = cfg.d_model
    if cfg.family == "llama":
        per_token = _swiglu_bytes(cfg, act, shape.flash)
    else:
        per_token = _gelu_bytes(cfg, act)
    if shape.half_via_fp32:
        per_token += 3 * d * 2 + (d * 4 if shape.flash else 0)
    if cfg.dropout > 0:
        per_token += 2 * d
    scores = 0
    if not shape.flash:
        bytes_per_weight = (2 if shape.half and not shape.half_via_fp32 else 4) + 1
        scores = bytes_per_weight * shape.batch * cfg.n_heads * shape.seq_len**2
    return tokens * per_token + scores


def _gelu_bytes(cfg: ModelConfig, act: int) -> int:
    """Per token of a GPT-2/BERT block: the residual input and the LayerNorm input stay fp32
    (2d); q, k, v, attention output, the projection input and the MLP input are matmul
    operands (6d), the MLP hidden twice (before and after GELU, 2 d_ff)."""
    return 2 * cfg.d_model * 4 + 6 * cfg.d_model * act + 2 * cfg.d_ff * act


def _swiglu_bytes(cfg: ModelConfig, act: int, flash: bool) -> int:
    """Per token of a Llama block (models/llama.py).

    Each RMSNorm (two) keeps its input and its normalised output in fp32 (it normalises in
    fp32) and the matmul its scaled output (act). Attention keeps the rotated queries (H*hd),
    the keys and values as SDPA reads them, and its output (H*hd), which the output
    projection reads as a view. SDPA's fused kernel reads grouped keys and values in place: it
    keeps the rotated key (Hkv*hd), and v, a view, keeps the fused qkv output alive. Attention
    with dropout (kernels/dropout.py, unfused) repeats grouped keys and values to H heads by a
    copy (2 H*hd); with Hkv = 1 the repeat is a view. SwiGLU keeps the fused gate|up output
    (2 d_ff), silu(gate) (d_ff) and the product the down projection reads (d_ff).
    """
    d, heads, kv = cfg.d_model, cfg.n_heads * cfg.head_size, cfg.kv_heads * cfg.head_size
    # a copy H heads wide each, or (no copy) the rotated key and the qkv output v views
    grouped = 1 < cfg.kv_heads < cfg.n_heads and not flash
    keys_values = 2 * heads if grouped else kv + heads + 2 * kv
    norms = 2 * (2 * d * 4 + d * act)
    return norms + (2 * heads + keys_values) * act + 4 * cfg.d_ff * act


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
    if family(cfg.family).kind is Kind.ENCODER_DECODER:
        return encoder_decoder_activation_bytes(cfg, shape)
    tokens = shape.batch * shape.seq_len
    if cfg.family == "llama":  # no positions to add: the final RMSNorm's input and output
        embeddings = tokens * (2 * cfg.d_model * 4 + (cfg.d_model if cfg.dropout > 0 else 0))
    else:  # embedding sum, its dropout/norm, final norm
        embeddings = 3 * tokens * cfg.d_model * 4
    layer = layer_activation_bytes(cfg, shape)
    if shape.checkpointing:
        # each block keeps only its input; one block's activations exist again in backward
        return embeddings + cfg.n_layers * tokens * cfg.d_model * 4 + layer
    return embeddings + cfg.n_layers * layer


def _rms_norm_bytes(d: int, act: int) -> int:
    """Per token, one T5 norm: its fp32 input, 1/rms and normalised input, the output a matmul
    reads (in the autocast dtype)."""
    return (2 * d + 1) * 4 + d * act


def _t5_block_bytes(cfg: ModelConfig, shape: ActivationShape, decoder: bool) -> int:
    """Bytes one T5 block saves. Self-attention always keeps its [B,H,T,T] weights: the
    position bias takes gradients, which SDPA's fused CPU kernel cannot give, so PyTorch runs
    the unfused path (copies of q, k^T and v, the softmax, and the projection's input). Cross-
    attention has no trainable mask and runs fused (q, output, log-sum-exp, projection input)
    except with attention dropout (the unfused path: [B,H,T,S] weights and a keep mask); its
    keys and values of the S encoder positions stay for every decoder block."""
    act = 2 if shape.half else 4
    d, inner, ff = cfg.d_model, cfg.n_heads * cfg.d_kv, cfg.d_ff
    s = shape.seq_len
    t = max(1, round(shape.lm_rows_share * s)) if decoder else s
    # gated: gate, fc, GELU and product outputs; relu: its output, and dropout's if any
    ff_units = 4 * ff if cfg.feed_forward == "gated-gelu" else ff * (2 if cfg.dropout else 1)
    per_token = (3 if decoder else 2) * _rms_norm_bytes(d, act) + 4 * inner * act + ff_units * act
    if cfg.dropout > 0:  # 1-byte keep masks: each sub-layer's output and the feed-forward
        per_token += (3 if decoder else 2) * d + ff
    weight_bytes = 4 + (1 if cfg.attn_dropout > 0 else 0)
    total = shape.batch * t * per_token + weight_bytes * shape.batch * cfg.n_heads * t * t
    if decoder:
        total += shape.batch * s * 2 * inner * act  # cross-attention keys and values
        if cfg.attn_dropout > 0:
            total += shape.batch * t * 2 * inner * act + 5 * shape.batch * cfg.n_heads * t * s
        else:
            total += shape.batch * t * (3 * inner * act + cfg.n_heads * 4)
    return total


def encoder_decoder_activation_bytes(cfg: ModelConfig, shape: ActivationShape) -> int:
    """An encoder-decoder (T5): encoder blocks at the `seq_len` sources, decoder blocks at the
    targets (`lm_rows_share` of seq_len, as the FLOPs count), each block's cross-attention
    keys and values of the encoder output, the final norms and the bucket indices."""
    b, s = shape.batch, shape.seq_len
    t = max(1, round(shape.lm_rows_share * s))
    act = 2 if shape.half else 4
    drop = 2 * cfg.d_model if cfg.dropout > 0 else 0  # embedding and final dropout masks
    fixed = 8 * (s * s + t * t) + t * t  # int64 position buckets, the bool causal mask
    # each stack's final norm; the encoder's output is read by every cross-attention
    fixed += b * s * (_rms_norm_bytes(cfg.d_model, act) + drop) + b * t * (
        (2 * cfg.d_model + 1) * 4 + drop
    )
    encoder = _t5_block_bytes(cfg, shape, decoder=False)
    decoder = _t5_block_bytes(cfg, shape, decoder=True)
    if shape.checkpointing:  # blocks keep their inputs; one block's activations come back
        kept = 4 * cfg.d_model * (cfg.n_layers * b * s + cfg.decoder_layers * b * t)
        # cross-attention keys and values are made outside the blocks, so they stay too
        kept += cfg.decoder_layers * b * s * 2 * cfg.n_heads * cfg.d_kv * act
        return fixed + kept + max(encoder, decoder)
    return fixed + cfg.n_layers * encoder + cfg.decoder_layers * decoder


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
