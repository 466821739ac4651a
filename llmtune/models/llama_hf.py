"""The Hugging Face layout of the Llama family (LlamaForCausalLM, Qwen2ForCausalLM,
MistralForCausalLM and their bare / sequence-classification classes): config.json <-> LlamaConfig
and the one key map convert.py reads state dicts through, both ways.

Our fused `attn.qkv` is HF's q_proj, k_proj, v_proj stacked by rows; `mlp.fc` is gate_proj
then up_proj. Pure functions: nothing here builds a model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from llmtune.errors import CheckpointError
from llmtune.models.family import Arch, Entry
from llmtune.models.rope import RopeScaling

if TYPE_CHECKING:  # llama.py builds its Family from this module
    from llmtune.models.llama import LlamaConfig

# model_type -> class name stem; the class for a set of heads is stem + Arch suffix
HF_MODEL_TYPES = {"llama": "Llama", "qwen2": "Qwen2", "mistral": "Mistral"}
_SUFFIXES = {(): "Model", ("lm",): "ForCausalLM", ("seq_cls",): "ForSequenceClassification"}
ARCHS = tuple(
    Arch(stem + suffix, "model." if heads else "", False, frozenset(heads))
    for stem in HF_MODEL_TYPES.values()
    for heads, suffix in _SUFFIXES.items()
)


def key_map(config: LlamaConfig, heads: Sequence[str], prefix: str, pooler: bool) -> list[Entry]:
    """Every entry of a model of `config` with `heads`; HF backbone keys under `prefix`."""
    q_rows, kv_rows = config.n_heads * config.head_size, config.kv_heads * config.head_size
    out = [Entry("backbone.tok_emb.weight", (f"{prefix}embed_tokens.weight",))]
    for i in range(config.n_layers):
        ours, hf = f"backbone.blocks.{i}", f"{prefix}layers.{i}"
        att, mlp = f"{hf}.self_attn", f"{hf}.mlp"
        for kind in ("weight", "bias") if config.attention_bias else ("weight",):
            qkv = tuple(f"{att}.{n}_proj.{kind}" for n in "qkv")
            out.append(Entry(f"{ours}.attn.qkv.{kind}", qkv, rows=(q_rows, kv_rows, kv_rows)))
        for kind in ("weight", "bias") if config.attention_out_bias else ("weight",):
            out.append(Entry(f"{ours}.attn.proj.{kind}", (f"{att}.o_proj.{kind}",)))
        for kind in ("weight", "bias") if config.mlp_bias else ("weight",):
            gate_up = (f"{mlp}.gate_proj.{kind}", f"{mlp}.up_proj.{kind}")
            out.append(Entry(f"{ours}.mlp.fc.{kind}", gate_up))
            out.append(Entry(f"{ours}.mlp.proj.{kind}", (f"{mlp}.down_proj.{kind}",)))
        out.append(Entry(f"{ours}.ln_attn.weight", (f"{hf}.input_layernorm.weight",)))
        out.append(Entry(f"{ours}.ln_mlp.weight", (f"{hf}.post_attention_layernorm.weight",)))
    out.append(Entry("backbone.ln_f.weight", (f"{prefix}norm.weight",)))
    if "lm" in heads:
        out.append(Entry("heads.lm.weight", ("lm_head.weight",)))
    if "seq_cls" in heads:
        out.append(Entry("heads.seq_cls.proj.weight", ("score.weight",)))  # no bias
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


def llama_config_kwargs(c: Mapping) -> dict[str, Any]:
    """LlamaConfig's keys from a config.json body of model_type llama, qwen2 or mistral."""
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
    return dict(
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


def class_name(config: LlamaConfig, arch: Arch) -> str:
    """The HF class of `arch`'s heads for this config's model type (Qwen2ForCausalLM, ...)."""
    suffix = next(s for heads, s in _SUFFIXES.items() if frozenset(heads) == arch.heads)
    return HF_MODEL_TYPES[hf_model_type(config)] + suffix


def hf_config_body(config: LlamaConfig) -> dict:
    """The family's part of config.json (transformers 4 and 5 read it)."""
    kind = hf_model_type(config)
    out = {
        "model_type": kind,
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
    }
    if kind == "llama":
        out |= {"attention_bias": config.attention_bias, "mlp_bias": config.mlp_bias}
    if kind == "mistral":
        out["sliding_window"] = config.sliding_window
    if kind == "qwen2":
        out |= {"use_sliding_window": False, "sliding_window": None}
    return out
