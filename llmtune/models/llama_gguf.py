"""Llama-family weights from a llama.cpp GGUF file, read with the `gguf` package (llama.cpp's
own reader): metadata, tensors dequantized to fp32, llama.cpp's q/k row interleaving undone,
tensor names mapped to the Hugging Face layout (llama_hf.py takes it from there).
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
from llmtune.models.rope import RopeScaling, inverse_frequencies

# GGUF architectures whose tensors this module maps; only "llama" files interleave q/k rows
GGUF_ARCHS = ("llama", "qwen2")
GGUF_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
GGUF_TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
ROPE_FREQS = "rope_freqs.weight"  # llama3 scaling, stored as a divisor per frequency


def open_gguf(path: Path) -> Any:
    """A gguf.GGUFReader over `path` (memory-mapped; nothing is dequantized yet)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such GGUF file")
    try:
        return gguf.GGUFReader(path)
    except Exception as exc:  # the reader raises many types on a damaged file; all mean the same
        raise CheckpointError(f"{path}: not a readable GGUF file ({exc})") from None


def gguf_metadata(reader: Any) -> dict[str, Any]:
    """Every metadata key with its value as Python data (strings, numbers, lists)."""
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def dequantize(tensor: Any) -> torch.Tensor:
    """One GGUF tensor as fp32 in PyTorch's layout ([rows, cols] for a matrix)."""
    try:
        array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError:
        readable = sorted(t.name for t in gguf.GGMLQuantizationType if _readable(t))
        raise CheckpointError(
            f"GGUF tensor {tensor.name} has quantization type {tensor.tensor_type.name}, which "
            f"llmtune cannot read (readable: {', '.join(readable)})"
        ) from None
    shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF lists dimensions fastest first
    return torch.from_numpy(np.array(array, dtype=np.float32).reshape(shape))


def _readable(qtype: Any) -> bool:
    """Whether gguf can dequantize `qtype` (its table of block formats is private: read it
    defensively, it only serves the error message)."""
    plain = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
    return qtype in plain or qtype in getattr(gguf.quants, "_type_traits", {})


def _uninterleave(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row order: within each head llama.cpp stores rotation pairs side by
    side (rows 0,1 = pair 0); Hugging Face stores the first halves, then the second halves."""
    pairs = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, pairs, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _hf_name(name: str) -> str:
    if name in GGUF_TOP_NAMES:
        return GGUF_TOP_NAMES[name]
    parts = name.split(".")  # blk.<i>.<tensor>.<weight|bias>
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in GGUF_BLOCK_NAMES:
        return f"model.layers.{parts[1]}.{GGUF_BLOCK_NAMES[parts[2]]}.{parts[3]}"
    raise CheckpointError(f"GGUF tensor {name} has no place in a llama-family model")


def hf_state_dict_from_gguf(reader: Any, config: LlamaConfig) -> dict[str, torch.Tensor]:
    """Every weight tensor dequantized to fp32, under Hugging Face LlamaForCausalLM keys."""
    interleaved = _architecture(gguf_metadata_light(reader)) == "llama"
    out: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        if tensor.name == ROPE_FREQS:
            continue  # folded into config.rope_scaling by llama_config_from_gguf
        key = _hf_name(tensor.name)
        weight = dequantize(tensor)
        if interleaved and ".q_proj." in key:
            weight = _uninterleave(weight, config.n_heads)
        elif interleaved and ".k_proj." in key:
            weight = _uninterleave(weight, config.kv_heads)
        out[key] = weight
    return out


def gguf_metadata_light(reader: Any) -> dict[str, Any]:
    """Metadata without the (large) tokenizer arrays: enough for the architecture."""
    return {
        k: f.contents()
        for k, f in reader.fields.items()
        if not k.startswith(("GGUF.", "tokenizer.ggml."))
    }


def _architecture(meta: Mapping[str, Any]) -> str:
    arch = meta.get("general.architecture")
    if arch not in GGUF_ARCHS:
        raise CheckpointError(
            f"GGUF architecture '{arch}' is not a llama-family model llmtune reads "
            f"(supported: {', '.join(GGUF_ARCHS)})"
        )
    return arch


def _int(meta: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = meta.get(key, default)
    if isinstance(value, list):
        if len(set(value)) != 1:
            raise CheckpointError(f"GGUF {key} differs between layers ({value[:4]}): unsupported")
        value = value[0]
    if value is None:
        raise CheckpointError(f"GGUF metadata has no {key}")
    return int(value)


def llama_config_from_gguf(reader: Any) -> LlamaConfig:
    """The architecture a GGUF file describes (its metadata and which tensors it holds)."""
    meta = gguf_metadata_light(reader)
    arch = _architecture(meta)
    names = {t.name for t in reader.tensors}
    n_heads = _int(meta, f"{arch}.attention.head_count")
    d_model = _int(meta, f"{arch}.embedding_length")
    head_dim = _int(meta, f"{arch}.attention.key_length", d_model // n_heads)
    if _int(meta, f"{arch}.rope.dimension_count", head_dim) != head_dim:
        raise CheckpointError("GGUF rope.dimension_count differs from the head size: unsupported")
    embed = next(t for t in reader.tensors if t.name == "token_embd.weight")
    rope_freqs = next((t for t in reader.tensors if t.name == ROPE_FREQS), None)
    theta = float(meta.get(f"{arch}.rope.freq_base", 10000.0))
    n_positions = _int(meta, f"{arch}.context_length", 2048)
    return LlamaConfig(
        vocab_size=int(embed.shape[1]),  # GGUF shape [d_model, vocab]
        d_model=d_model,
        n_layers=_int(meta, f"{arch}.block_count"),
        n_heads=n_heads,
        n_kv_heads=_int(meta, f"{arch}.attention.head_count_kv", n_heads),
        head_dim=head_dim,
        d_ff=_int(meta, f"{arch}.feed_forward_length"),
        max_seq_len=min(n_positions, 2048),
        n_positions=n_positions,
        tie_embeddings="output.weight" not in names,
        rope_theta=theta,
        rope_scaling=_rope_scaling(meta, arch, rope_freqs, head_dim, theta),
        norm_eps=float(meta.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        attention_bias="blk.0.attn_q.bias" in names,
        attention_out_bias="blk.0.attn_output.bias" in names,
        mlp_bias="blk.0.ffn_up.bias" in names,
    )


def _rope_scaling(
    meta: Mapping[str, Any], arch: str, rope_freqs: Any, head_dim: int, theta: float
) -> RopeScaling:
    kind = meta.get(f"{arch}.rope.scaling.type", "none")
    if rope_freqs is not None:
        return _llama3_from_divisors(dequantize(rope_freqs), head_dim, theta)
    if kind == "none":
        return RopeScaling()
    if kind != "linear":
        raise CheckpointError(f"GGUF rope.scaling.type '{kind}' is unsupported (none, linear)")
    return RopeScaling(type="linear", factor=float(meta[f"{arch}.rope.scaling.factor"]))


# the llama3 band settings of Llama 3.1 / 3.2 (low_freq_factor, high_freq_factor, pretraining
# context): llama.cpp bakes them, with the factor, into rope_freqs
_LLAMA3_BANDS = ((1.0, 4.0, 8192),)


def _llama3_from_divisors(divisors: torch.Tensor, head_dim: int, theta: float) -> RopeScaling:
    """llama.cpp stores llama3 scaling as one divisor per frequency (base / scaled). Recover
    the settings that reproduce every divisor, or refuse."""
    divisors = divisors.flatten().double()
    if bool((divisors == 1).all()):
        return RopeScaling()
    base = inverse_frequencies(head_dim, theta, RopeScaling(), 0, 0).double()
    wavelen = 2 * torch.pi / base
    for low, high, context in _LLAMA3_BANDS:
        # beyond context/low the divisor is the factor; inside the band it is
        # 1 / ((1 - s) / factor + s), which gives the factor back from any one frequency
        s = (context / wavelen - low) / (high - low)
        factors = torch.where(wavelen > context / low, divisors, (1 - s) / (1 / divisors - s))
        # the largest divisor carries the least float32 rounding; factors are round numbers
        factor = round(float(factors[int(divisors.argmax())]), 2)
        scaling = RopeScaling("llama3", factor, low, high, context)
        scaled = inverse_frequencies(head_dim, theta, scaling, 0, 0).double()
        if torch.allclose(base / scaled, divisors, rtol=1e-4):
            return scaling
    shown = [round(x, 3) for x in divisors[:: max(1, head_dim // 16)].tolist()]
    raise CheckpointError(f"GGUF rope_freqs match no known llama3 scaling (divisors {shown})")
