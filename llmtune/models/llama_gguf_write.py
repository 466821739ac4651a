"""Llama-family weights written as a llama.cpp GGUF file (F16 or F32) with gguf's GGUFWriter:
the inverse of llama_gguf.py, so llama.cpp users can run what llmtune trained.

Matrices are stored in the chosen float type, norms and biases in F32 (as llama.cpp's own
converter does); "llama" files get llama.cpp's interleaved q/k rows, llama3 scaling becomes a
rope_freqs tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from llmtune.errors import CheckpointError
from llmtune.models.llama import LlamaConfig
from llmtune.models.llama_gguf import GGUF_BLOCK_NAMES, GGUF_TOP_NAMES, ROPE_FREQS
from llmtune.models.rope import RopeScaling, inverse_frequencies

GGUF_DTYPES = {"f16": gguf.GGMLQuantizationType.F16, "f32": gguf.GGMLQuantizationType.F32}
_FILE_TYPES = {"f16": gguf.LlamaFileType.MOSTLY_F16, "f32": gguf.LlamaFileType.ALL_F32}
_GGUF_OF_HF = {hf: name for name, hf in GGUF_TOP_NAMES.items()}
_GGUF_OF_BLOCK = {hf: name for name, hf in GGUF_BLOCK_NAMES.items()}


def gguf_architecture(config: LlamaConfig) -> str:
    """llama.cpp's architecture for this config (qwen2: q/k/v biases without an output bias),
    or a one-line refusal for what llama.cpp would compute differently."""
    if config.sliding_window and config.sliding_window < config.n_positions:
        raise CheckpointError("format=gguf: llama.cpp's llama models have no sliding window")
    if config.rope_scaling.type == "dynamic":
        raise CheckpointError("format=gguf: llama.cpp has no dynamic (NTK) rope scaling")
    if config.attention_bias and not config.attention_out_bias:
        return "qwen2"
    return "llama"


def _gguf_name(hf_key: str) -> str:
    if hf_key in _GGUF_OF_HF:
        return _GGUF_OF_HF[hf_key]
    stem, kind = hf_key.rsplit(".", 1)
    _, _, layer, part = stem.split(".", 3)  # model.layers.<i>.<part>
    return f"blk.{layer}.{_GGUF_OF_BLOCK[part]}.{kind}"


def _interleave(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's q/k row order: within each head, rotation pairs side by side."""
    pairs = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, 2, pairs, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _add_hyperparameters(w: gguf.GGUFWriter, config: LlamaConfig, dtype: str) -> None:
    w.add_vocab_size(config.vocab_size)
    w.add_context_length(config.n_positions)
    w.add_embedding_length(config.d_model)
    w.add_block_count(config.n_layers)
    w.add_feed_forward_length(config.d_ff)
    w.add_head_count(config.n_heads)
    w.add_head_count_kv(config.kv_heads)
    w.add_key_length(config.head_size)
    w.add_value_length(config.head_size)
    w.add_rope_dimension_count(config.head_size)
    w.add_rope_freq_base(config.rope_theta)
    w.add_layer_norm_rms_eps(config.norm_eps)
    w.add_file_type(_FILE_TYPES[dtype])
    if config.rope_scaling.type == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(config.rope_scaling.factor)


def _add_tokenizer(w: gguf.GGUFWriter, meta: Mapping[str, Any]) -> None:
    """The `tokenizer.*` keys of gguf_tokenizer.gguf_tokenizer_metadata."""
    w.add_tokenizer_model(meta["tokenizer.ggml.model"])
    w.add_tokenizer_pre(meta["tokenizer.ggml.pre"])
    w.add_token_list(meta["tokenizer.ggml.tokens"])
    w.add_token_types(meta["tokenizer.ggml.token_type"])
    w.add_token_merges(meta["tokenizer.ggml.merges"])
    ids = {"bos": w.add_bos_token_id, "eos": w.add_eos_token_id, "padding": w.add_pad_token_id}
    for role, add in ids.items():
        if meta.get(f"tokenizer.ggml.{role}_token_id") is not None:
            add(meta[f"tokenizer.ggml.{role}_token_id"])
    w.add_add_bos_token(bool(meta.get("tokenizer.ggml.add_bos_token", False)))
    if meta.get("tokenizer.chat_template"):
        w.add_chat_template(meta["tokenizer.chat_template"])


def write_llama_gguf(
    path: Path,
    hf_sd: Mapping[str, torch.Tensor],
    config: LlamaConfig,
    tokenizer_meta: Mapping[str, Any],
    dtype: str = "f16",
) -> None:
    """Write HF-layout weights (llama_hf.llama_to_hf_state_dict) and tokenizer metadata."""
    arch = gguf_architecture(config)
    w = gguf.GGUFWriter(path, arch)
    _add_hyperparameters(w, config, dtype)
    _add_tokenizer(w, tokenizer_meta)
    if config.rope_scaling.type == "llama3":
        base = inverse_frequencies(config.head_size, config.rope_theta, RopeScaling(), 0, 0)
        scaled = inverse_frequencies(config.head_size, config.rope_theta, config.rope_scaling, 0, 0)
        w.add_tensor(ROPE_FREQS, (base / scaled).numpy().astype(np.float32))
    for key, tensor in hf_sd.items():
        array = tensor.detach().float().cpu().numpy()
        if arch == "llama" and ".q_proj." in key:
            array = _interleave(array, config.n_heads)
        elif arch == "llama" and ".k_proj." in key:
            array = _interleave(array, config.kv_heads)
        if dtype == "f16" and array.ndim == 2:
            if not np.isfinite(array).all() or np.abs(array).max() > np.finfo(np.float16).max:
                raise CheckpointError(f"format=gguf: {key} exceeds the F16 range; use dtype f32")
            array = array.astype(np.float16)
        w.add_tensor(_gguf_name(key), np.ascontiguousarray(array))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
