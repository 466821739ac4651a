"""The key map between llmtune's T5 and Hugging Face's T5ForConditionalGeneration / T5Model
(v1.0 and v1.1 layouts), both ways, plus config.json <-> T5Config. Pure functions on dicts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from llmtune.errors import CheckpointError, ConfigError
from llmtune.models.t5 import FEED_FORWARDS, T5Config

# HF's feed_forward_proj and the activation it implies (config.json's dense_act_fn).
_ACTIVATION = {"relu": "relu", "gated-gelu": "gelu_new"}
# Keys some HF T5 files carry that hold no weights of their own: the stacks' aliases of
# `shared`, and a cross-attention position table old checkpoints stored but never used.
_ALIASES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
_UNUSED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)


@dataclass(frozen=True)
class Entry:
    """One of our keys and the HF keys concatenated (along dim 0) to make it."""

    ours: str
    hf: tuple[str, ...]


def hf_architecture(heads: Sequence[str]) -> str:
    """The HF class holding exactly these heads: T5ForConditionalGeneration (lm) or T5Model."""
    if set(heads) == {"lm"}:
        return "T5ForConditionalGeneration"
    if not heads:
        return "T5Model"
    raise ConfigError(f"no Hugging Face T5 class holds exactly the heads {sorted(heads)}")


def t5_config_from_hf(hf: Mapping[str, Any]) -> T5Config:
    """Our config from a T5 config.json dict. HF's `tie_word_embeddings` (and, since
    transformers 5, `scale_decoder_outputs`) is what decides v1.0's scaled tied head."""
    proj = hf.get("feed_forward_proj", "relu")
    if proj not in FEED_FORWARDS:
        raise ConfigError(
            f"config.json feed_forward_proj={proj!r} is not supported (only relu, gated-gelu)"
        )
    tied = bool(hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True)))
    try:
        return T5Config(
            vocab_size=int(hf["vocab_size"]),
            d_model=int(hf["d_model"]),
            n_layers=int(hf["num_layers"]),
            n_decoder_layers=int(hf.get("num_decoder_layers") or hf["num_layers"]),
            n_heads=int(hf["num_heads"]),
            d_kv=int(hf["d_kv"]),
            d_ff=int(hf["d_ff"]),
            dropout=float(hf.get("dropout_rate", 0.1)),
            tie_embeddings=tied,
            feed_forward=proj,
            relative_attention_num_buckets=int(hf.get("relative_attention_num_buckets", 32)),
            relative_attention_max_distance=int(hf.get("relative_attention_max_distance", 128)),
            norm_eps=float(hf.get("layer_norm_epsilon", 1e-6)),
        )
    except KeyError as e:
        raise ConfigError(f"config.json of a T5 model lacks the key {e.args[0]!r}") from None


def hf_config_from_t5(
    config: T5Config, heads: Sequence[str] = ("lm",), special_ids: Mapping[str, int] | None = None
) -> dict[str, Any]:
    """A config.json dict for `config`. `special_ids` gives pad/eos/decoder_start ids (T5's
    own 0, 1, 0 by default); decoder_start_token_id is the pad id, as in T5."""
    ids = {"pad_token_id": 0, "eos_token_id": 1, **(special_ids or {})}
    ids.setdefault("decoder_start_token_id", ids["pad_token_id"])
    return {
        "architectures": [hf_architecture(heads)],
        "model_type": "t5",
        "vocab_size": config.vocab_size,
        "d_model": config.d_model,
        "d_kv": config.d_kv,
        "d_ff": config.d_ff,
        "num_layers": config.n_layers,
        "num_decoder_layers": config.decoder_layers,
        "num_heads": config.n_heads,
        "relative_attention_num_buckets": config.relative_attention_num_buckets,
        "relative_attention_max_distance": config.relative_attention_max_distance,
        "dropout_rate": config.dropout,
        "layer_norm_epsilon": config.norm_eps,
        "initializer_factor": 1.0,
        "feed_forward_proj": config.feed_forward,
        "dense_act_fn": _ACTIVATION[config.feed_forward],
        "is_gated_act": config.feed_forward == "gated-gelu",
        # transformers < 5 reads this as "tie and scale"; >= 5 as "scale" (it ties when
        # lm_head.weight is absent from the weights, which is how tied models are written)
        "tie_word_embeddings": config.tie_embeddings,
        "is_encoder_decoder": True,
        "use_cache": True,
        **ids,
    }


def _stack_entries(config: T5Config, ours: str, hf: str, decoder: bool) -> list[Entry]:
    """Entries of one encoder or decoder stack."""
    # T5 keeps the position table in block 0's self-attention; we keep it on the stack
    table = f"{hf}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    out = [
        Entry(f"{ours}.rel_bias.table.weight", (table,)),
        Entry(f"{ours}.ln_f.weight", (f"{hf}.final_layer_norm.weight",)),
    ]
    n = config.decoder_layers if decoder else config.n_layers
    for i in range(n):
        o, h = f"{ours}.blocks.{i}", f"{hf}.block.{i}.layer"
        att = f"{h}.0.SelfAttention"
        out += [
            Entry(f"{o}.ln_attn.weight", (f"{h}.0.layer_norm.weight",)),
            Entry(f"{o}.attn.qkv.weight", tuple(f"{att}.{x}.weight" for x in "qkv")),
            Entry(f"{o}.attn.proj.weight", (f"{att}.o.weight",)),
        ]
        ff = 1
        if decoder:
            ff, cross = 2, f"{h}.1.EncDecAttention"
            out += [
                Entry(f"{o}.ln_cross.weight", (f"{h}.1.layer_norm.weight",)),
                Entry(f"{o}.cross_attn.q.weight", (f"{cross}.q.weight",)),
                Entry(f"{o}.cross_attn.kv.weight", (f"{cross}.k.weight", f"{cross}.v.weight")),
                Entry(f"{o}.cross_attn.proj.weight", (f"{cross}.o.weight",)),
            ]
        dense = f"{h}.{ff}.DenseReluDense"
        out += [Entry(f"{o}.ln_mlp.weight", (f"{h}.{ff}.layer_norm.weight",))]
        if config.feed_forward == "gated-gelu":
            out += [
                Entry(f"{o}.mlp.gate.weight", (f"{dense}.wi_0.weight",)),
                Entry(f"{o}.mlp.fc.weight", (f"{dense}.wi_1.weight",)),
            ]
        else:
            out += [Entry(f"{o}.mlp.fc.weight", (f"{dense}.wi.weight",))]
        out += [Entry(f"{o}.mlp.proj.weight", (f"{dense}.wo.weight",))]
    return out


def key_map(config: T5Config, heads: Sequence[str] = ("lm",)) -> list[Entry]:
    """Every weight of our T5 with its HF source; the one table used both ways."""
    entries = [Entry("backbone.tok_emb.weight", ("shared.weight",))]
    entries += _stack_entries(config, "backbone.encoder", "encoder", decoder=False)
    entries += _stack_entries(config, "backbone.decoder", "decoder", decoder=True)
    if "lm" in heads and not config.tie_embeddings:
        entries.append(Entry("heads.lm.weight", ("lm_head.weight",)))
    return entries


def t5_to_hf_state_dict(
    state: Mapping[str, torch.Tensor], config: T5Config, heads: Sequence[str] = ("lm",)
) -> dict[str, torch.Tensor]:
    """Our state dict -> HF layout. Tied models write no lm_head.weight (HF ties it)."""
    out: dict[str, torch.Tensor] = {}
    for e in key_map(config, heads):
        if e.ours not in state:
            raise CheckpointError(f"the T5 weights lack {e.ours!r}; cannot export")
        parts = state[e.ours].chunk(len(e.hf), dim=0) if len(e.hf) > 1 else (state[e.ours],)
        for name, part in zip(e.hf, parts, strict=True):
            out[name] = part.contiguous()
    return out


def _check_aliases(hf: Mapping[str, torch.Tensor], config: T5Config) -> None:
    """Aliases of `shared` must hold the same table; a tied model's lm_head must equal it."""
    shared = hf["shared.weight"]
    aliases = list(_ALIASES)
    if config.tie_embeddings:
        aliases.append("lm_head.weight")
    for key in aliases:
        if key in hf and not torch.equal(hf[key], shared):
            raise CheckpointError(
                f"the T5 weights hold {key!r} different from 'shared.weight' although the "
                "config ties them; set tie_word_embeddings=false in config.json if it is its own"
            )


def t5_from_hf_state_dict(
    hf: Mapping[str, torch.Tensor], config: T5Config, heads: Sequence[str] = ("lm",)
) -> dict[str, torch.Tensor]:
    """HF T5 weights -> our state dict (tied head keys left out: they alias the embedding).

    An untied head whose lm_head.weight is absent takes a copy of `shared` (transformers 5
    writes such a model that way). Missing or unknown weights are a one-line error.
    """
    if "shared.weight" not in hf:
        raise CheckpointError("the T5 weights lack 'shared.weight'; is this a T5 checkpoint?")
    _check_aliases(hf, config)
    hf = dict(hf)
    if "lm" in heads and not config.tie_embeddings and "lm_head.weight" not in hf:
        hf["lm_head.weight"] = hf["shared.weight"].clone()
    entries = key_map(config, heads)
    missing = [k for e in entries for k in e.hf if k not in hf]
    if missing:
        raise CheckpointError(
            f"the T5 weights lack {len(missing)} tensor(s) the config needs, e.g. {missing[0]!r}"
        )
    known = {k for e in entries for k in e.hf} | set(_ALIASES) | set(_UNUSED)
    if config.tie_embeddings or "lm" not in heads:
        known.add("lm_head.weight")
    unknown = sorted(set(hf) - known)
    if unknown:
        raise CheckpointError(
            f"the T5 weights hold {len(unknown)} tensor(s) this config has no place for, "
            f"e.g. {unknown[0]!r}; does config.json match the weights?"
        )
    return {e.ours: torch.cat([hf[k] for k in e.hf], dim=0) for e in entries}
