"""The Hugging Face layout of the Llama family (LlamaForCausalLM, Qwen2ForCausalLM,
MistralForCausalLM and their bare / sequence-classification classes): config.json <-> LlamaConfig,
state dicts both ways through one key map, and (sharded) safetensors folders.

Our fused `attn.qkv` is HF's q_proj, k_proj, v_proj stacked by rows; `mlp.fc` is gate_proj
then up_proj. Pure functions: nothing here builds a model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from llmtune.errors import CheckpointError
from llmtune.models.llama import LlamaConfig
from llmtune.models.rope import RopeScaling

# model_type -> class name stem; the class for a set of heads is stem + suffix
HF_MODEL_TYPES = {"llama": "Llama", "qwen2": "Qwen2", "mistral": "Mistral"}
_CLASS_SUFFIX = {(): "Model", ("lm",): "ForCausalLM", ("seq_cls",): "ForSequenceClassification"}
_HEAD_KEYS = {"lm": "lm_head.weight", "seq_cls": "score.weight"}
# HF keys that are buffers of old checkpoints, never weights
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
SINGLE_FILE, INDEX_FILE = "model.safetensors", "model.safetensors.index.json"


@dataclass(frozen=True)
class Entry:
    """One of our keys and the HF keys stacked (by rows, in order) to make it."""

    ours: str
    hf: tuple[str, ...]
    rows: tuple[int, ...] = ()  # the row count of each HF piece when there are several


def key_map(config: LlamaConfig, heads: Sequence[str], prefix: str) -> list[Entry]:
    """Every entry of a model of `config` with `heads`; HF backbone keys under `prefix`."""
    q_rows, kv_rows = config.n_heads * config.head_size, config.kv_heads * config.head_size
    out = [Entry("backbone.tok_emb.weight", (f"{prefix}embed_tokens.weight",))]
    for i in range(config.n_layers):
        ours, hf = f"backbone.blocks.{i}", f"{prefix}layers.{i}"
        att, mlp = f"{hf}.self_attn", f"{hf}.mlp"
        kinds = ("weight", "bias") if config.attention_bias else ("weight",)
        for kind in kinds:
            qkv = tuple(f"{att}.{n}_proj.{kind}" for n in "qkv")
            out.append(Entry(f"{ours}.attn.qkv.{kind}", qkv, (q_rows, kv_rows, kv_rows)))
        for kind in ("weight", "bias") if config.attention_out_bias else ("weight",):
            out.append(Entry(f"{ours}.attn.proj.{kind}", (f"{att}.o_proj.{kind}",)))
        for kind in ("weight", "bias") if config.mlp_bias else ("weight",):
            gate_up = (f"{mlp}.gate_proj.{kind}", f"{mlp}.up_proj.{kind}")
            out.append(Entry(f"{ours}.mlp.fc.{kind}", gate_up, (config.d_ff, config.d_ff)))
            out.append(Entry(f"{ours}.mlp.proj.{kind}", (f"{mlp}.down_proj.{kind}",)))
        out.append(Entry(f"{ours}.ln_attn.weight", (f"{hf}.input_layernorm.weight",)))
        out.append(Entry(f"{ours}.ln_mlp.weight", (f"{hf}.post_attention_layernorm.weight",)))
    out.append(Entry("backbone.ln_f.weight", (f"{prefix}norm.weight",)))
    if "lm" in heads:
        out.append(Entry("heads.lm.weight", (_HEAD_KEYS["lm"],)))
    if "seq_cls" in heads:
        out.append(Entry("heads.seq_cls.proj.weight", (_HEAD_KEYS["seq_cls"],)))
    return out


def _prefix(heads: Sequence[str]) -> str:
    return "model." if heads else ""


def llama_to_hf_state_dict(
    sd: Mapping[str, torch.Tensor],
    config: LlamaConfig,
    heads: Sequence[str],
    include_tied: bool = False,
) -> dict[str, torch.Tensor]:
    """Our state dict under HF keys, as fresh contiguous tensors (safetensors-ready).

    A tied `lm_head.weight` is left out (HF re-ties it on load) unless `include_tied`.
    """
    out: dict[str, torch.Tensor] = {}
    for e in key_map(config, heads, _prefix(heads)):
        if e.ours == "heads.lm.weight" and config.tie_embeddings:
            if not include_tied:
                continue
            source = sd["backbone.tok_emb.weight"]  # a checkpoint stores tied weights once
        else:
            source = sd[e.ours]
        pieces = source.detach().split(list(e.rows), dim=0) if e.rows else (source.detach(),)
        for key, piece in zip(e.hf, pieces, strict=True):
            out[key] = piece.contiguous().clone()
    return out


def llama_from_hf_state_dict(
    hf_sd: Mapping[str, torch.Tensor], config: LlamaConfig, heads: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Our state dict from an HF one (bare backbone or a class with heads).

    A tied LM head is filled from the token table; `seq_cls` may be absent (it keeps its
    initialisation). Any other missing key, or an unknown one, raises CheckpointError; weights
    of HF heads not asked for are dropped.
    """
    prefix = "model." if any(k.startswith("model.") for k in hf_sd) else ""
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    for e in key_map(config, heads, prefix):
        if e.ours == "heads.lm.weight" and config.tie_embeddings:
            used.update(e.hf)  # the checkpoint's copy, if any, is the token table
            continue
        absent = [k for k in e.hf if k not in hf_sd]
        if absent:
            missing += [] if e.ours.startswith("heads.seq_cls.") else absent
            continue
        out[e.ours] = torch.cat([hf_sd[k] for k in e.hf]) if e.rows else hf_sd[e.hf[0]]
        used.update(e.hf)
    if "lm" in heads and config.tie_embeddings and "backbone.tok_emb.weight" in out:
        out["heads.lm.weight"] = out["backbone.tok_emb.weight"]
    unexpected = [
        k
        for k in hf_sd
        if k not in used and not k.endswith(_IGNORED_SUFFIXES) and k not in _HEAD_KEYS.values()
    ]
    if missing or unexpected:
        raise CheckpointError(
            f"Hugging Face weights do not fit this llama model ({config.n_layers} layers, "
            f"heads {list(heads)}): missing {missing[:4]}, unexpected {unexpected[:4]}"
        )
    return out


def _rope_from_hf(c: Mapping) -> tuple[float, RopeScaling]:
    """rope_theta and scaling from transformers 4 (rope_theta + rope_scaling) or 5
    (rope_parameters) config keys."""
    params = {**(c.get("rope_scaling") or {}), **(c.get("rope_parameters") or {})}
    theta = float(params.get("rope_theta", c.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise CheckpointError("unsupported Hugging Face partial_rotary_factor (rotary on all)")
    if kind == "default":
        return theta, RopeScaling()
    if kind not in ("linear", "dynamic", "llama3"):
        raise CheckpointError(
            f"unsupported Hugging Face rope type '{kind}' "
            "(supported: default, linear, dynamic, llama3)"
        )
    scaling = RopeScaling(
        type=kind,
        factor=float(params["factor"]),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(params.get("original_max_position_embeddings") or 0),
    )
    return theta, scaling


def _sliding_window(c: Mapping, kind: str) -> int:
    if kind == "qwen2" and c.get("use_sliding_window"):
        raise CheckpointError("unsupported Hugging Face use_sliding_window=true (Qwen2)")
    return int(c.get("sliding_window") or 0) if kind == "mistral" else 0


def llama_config_from_hf(c: Mapping) -> LlamaConfig:
    """A LlamaConfig from a config.json body of model_type llama, qwen2 or mistral."""
    kind = c.get("model_type")
    if kind not in HF_MODEL_TYPES:
        raise CheckpointError(
            f"unsupported Hugging Face model_type '{kind}' "
            f"(llama family: {', '.join(HF_MODEL_TYPES)})"
        )
    if c.get("hidden_act", "silu") != "silu":
        act = c["hidden_act"]
        raise CheckpointError(f"unsupported Hugging Face hidden_act '{act}' (silu only)")
    theta, scaling = _rope_from_hf(c)
    n_positions = int(c.get("max_position_embeddings", 2048))
    # Llama's attention_bias covers q, k, v and o; Qwen2 always has q/k/v biases and no o bias
    qkv_bias = kind == "qwen2" or bool(c.get("attention_bias", False))
    d_model, n_heads = int(c["hidden_size"]), int(c["num_attention_heads"])
    head_dim = int(c.get("head_dim") or 0)  # transformers 4 may write null
    return LlamaConfig(
        vocab_size=int(c["vocab_size"]),
        d_model=d_model,
        n_layers=int(c["num_hidden_layers"]),
        n_heads=n_heads,
        n_kv_heads=int(c.get("num_key_value_heads") or n_heads),
        head_dim=head_dim or d_model // n_heads,
        d_ff=int(c["intermediate_size"]),
        max_seq_len=min(n_positions, 2048),
        n_positions=n_positions,
        attn_dropout=float(c.get("attention_dropout", 0.0)),
        tie_embeddings=bool(c.get("tie_word_embeddings", kind != "llama")),
        rope_theta=theta,
        rope_scaling=scaling,
        norm_eps=float(c.get("rms_norm_eps", 1e-6)),
        attention_bias=qkv_bias,
        attention_out_bias=kind != "qwen2" and bool(c.get("attention_bias", False)),
        mlp_bias=bool(c.get("mlp_bias", False)),
        sliding_window=_sliding_window(c, kind),
    )


def hf_model_type(config: LlamaConfig) -> str:
    """The HF model_type that holds this architecture: qwen2 for q/k/v biases without an
    output bias, mistral for a sliding window, else llama."""
    if config.attention_bias and not config.attention_out_bias:
        if config.sliding_window or config.mlp_bias:
            raise CheckpointError("no Hugging Face class has q/k/v biases with these options")
        return "qwen2"
    if config.attention_bias != config.attention_out_bias:
        raise CheckpointError("no Hugging Face class has an output bias without q/k/v biases")
    if config.sliding_window:
        return "mistral"
    return "llama"


def _rope_to_hf(s: RopeScaling) -> dict | None:
    if s.type == "none":
        return None
    out = {"rope_type": s.type, "factor": s.factor}
    if s.type == "llama3":
        out |= {
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_position_embeddings,
        }
    return out


def hf_config_from_llama(
    config: LlamaConfig, heads: Sequence[str] = ("lm",), n_labels: int = 0
) -> dict:
    """A config.json body (transformers 4 and 5 read it) for this config and heads."""
    kind = hf_model_type(config)
    suffix = _CLASS_SUFFIX.get(tuple(sorted(heads)))
    if suffix is None:
        raise CheckpointError(f"no Hugging Face {kind} class holds exactly the heads {list(heads)}")
    out = {
        "architectures": [HF_MODEL_TYPES[kind] + suffix],
        "model_type": kind,
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.d_ff,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_size,
        "hidden_act": "silu",
        "max_position_embeddings": config.n_positions,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": _rope_to_hf(config.rope_scaling),
        "attention_dropout": config.attn_dropout,
        "tie_word_embeddings": config.tie_embeddings,
        "initializer_range": 0.02,
    }
    if kind == "llama":
        out |= {"attention_bias": config.attention_bias, "mlp_bias": config.mlp_bias}
    if kind == "mistral":
        out["sliding_window"] = config.sliding_window
    if kind == "qwen2":
        out |= {"use_sliding_window": False, "sliding_window": None}
    if n_labels:
        out["id2label"] = {str(i): f"LABEL_{i}" for i in range(n_labels)}
        out["label2id"] = {f"LABEL_{i}": i for i in range(n_labels)}
    return out


def heads_from_hf_class(config_json: Mapping) -> tuple[str, ...]:
    """Our heads for the first class in `architectures` (LM head when none is named)."""
    names = config_json.get("architectures") or ["ForCausalLM"]
    for key, suffix in _CLASS_SUFFIX.items():
        if names[0].endswith(suffix):
            return key
    raise CheckpointError(f"unsupported Hugging Face class '{names[0]}'")


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of an HF folder's model.safetensors, or of the shards its
    model.safetensors.index.json lists; a missing or unreadable file is named."""
    index = folder / INDEX_FILE
    if (folder / SINGLE_FILE).is_file():
        files = [folder / SINGLE_FILE]
    elif index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index}: not a safetensors index ({exc!r})") from None
        files = [folder / name for name in sorted(set(weight_map.values()))]
    else:
        raise CheckpointError(f"{folder}: no {SINGLE_FILE} or {INDEX_FILE}")
    out: dict[str, torch.Tensor] = {}
    for path in files:
        if not path.is_file():
            raise CheckpointError(f"{path}: missing shard listed in {INDEX_FILE}")
        try:
            out.update(load_file(path))
        except (SafetensorError, OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{path}: unreadable ({first})") from None
    return out
