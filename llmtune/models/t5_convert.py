"""T5's Hugging Face mapping (T5ForConditionalGeneration / T5Model, v1.0 and v1.1 layouts):
the key map used both ways by models/convert.py, and config.json <-> T5Config.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from llmtune.errors import CheckpointError
from llmtune.models.family import Arch, Entry, HFMapping
from llmtune.models.t5_layers import FEED_FORWARDS, T5Config

# HF's feed_forward_proj and the activation it implies (config.json's dense_act_fn).
_ACTIVATION = {"relu": "relu", "gated-gelu": "gelu_new"}

ARCHS = (
    Arch("T5Model", "", False, frozenset()),
    Arch("T5ForConditionalGeneration", "", False, frozenset({"lm"})),
)


def from_config(hf: Mapping[str, Any]) -> T5Config:
    """Our config from a T5 config.json dict. HF's `tie_word_embeddings` (and, since
    transformers 5, `scale_decoder_outputs`) is what decides v1.0's scaled tied head."""
    proj = hf.get("feed_forward_proj", "relu")
    if proj not in FEED_FORWARDS:
        raise CheckpointError(
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
            max_seq_len=int(hf.get("n_positions", 512)),  # T5's config names its input length so
            dropout=float(hf.get("dropout_rate", 0.1)),
            attn_dropout=float(hf.get("dropout_rate", 0.1)),
            tie_embeddings=tied,
            feed_forward=proj,
            relative_attention_num_buckets=int(hf.get("relative_attention_num_buckets", 32)),
            relative_attention_max_distance=int(hf.get("relative_attention_max_distance", 128)),
            norm_eps=float(hf.get("layer_norm_epsilon", 1e-6)),
        )
    except KeyError as e:
        raise CheckpointError(f"config.json of a T5 model lacks the key {e.args[0]!r}") from None


def to_config(config: T5Config) -> dict[str, Any]:
    """The T5 part of config.json; decoder_start_token_id is the pad id (0), as in T5."""
    return {
        "model_type": "t5",
        "d_model": config.d_model,
        "d_kv": config.d_kv,
        "d_ff": config.d_ff,
        "num_layers": config.n_layers,
        "num_decoder_layers": config.decoder_layers,
        "num_heads": config.n_heads,
        "n_positions": config.max_seq_len,
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
        "scale_decoder_outputs": config.tie_embeddings,
        "is_encoder_decoder": True,
        "use_cache": True,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
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


def key_map(config: T5Config, heads: Sequence[str], prefix: str, pooler: bool) -> list[Entry]:
    """Every weight of our T5 with its HF source; the one table used both ways. The stacks'
    embed_tokens aliases of `shared` are not weights of their own (models/convert.py skips
    them); a tied head is the token table (convert.py's TIED_HEAD_KEYS)."""
    entries = [Entry("backbone.tok_emb.weight", (f"{prefix}shared.weight",))]
    entries += _stack_entries(config, "backbone.encoder", f"{prefix}encoder", decoder=False)
    entries += _stack_entries(config, "backbone.decoder", f"{prefix}decoder", decoder=True)
    if "lm" in heads:
        entries.append(Entry("heads.lm.weight", ("lm_head.weight",)))
    return entries


HF = HFMapping(
    model_types=("t5",),
    archs=ARCHS,
    backbone_prefix="",
    pretraining_heads=("lm",),
    key_map=key_map,
    to_config=to_config,
    from_config=from_config,
    fallbacks={"lm_head.weight": "shared.weight"},
)
