"""THE key map between llmtune state dicts and Hugging Face GPT-2 / BERT layouts.

Used for both import (`from_hf_state_dict`) and export (`to_hf_state_dict`), plus config.json.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from llmtune.config.schema import ModelConfig
from llmtune.errors import CheckpointError, ConfigError
from llmtune.models.model import INIT_STD, LanguageModel

# Our head weights that share storage with the token table when tie_embeddings is set.
TIED_HEAD_KEYS = ("heads.lm.weight", "heads.mlm.decoder.weight")
# HF keys that are buffers or aliases, never weights of their own.
_HF_IGNORED_SUFFIXES = ("embeddings.position_ids", ".attn.bias", ".attn.masked_bias")
_HF_BIAS_ALIAS = ("cls.predictions.decoder.bias", "cls.predictions.bias")
# HF head prefixes an import may drop when the head was not asked for (e.g. fine-tuning
# from a pretraining checkpoint).
_HF_HEAD_PREFIXES = ("lm_head.", "cls.", "classifier.", "score.")
_FINETUNE_HEADS = ("seq_cls", "token_cls")


@dataclass(frozen=True)
class Arch:
    """A Hugging Face model class: its key prefix, whether it has BERT's pooler, our heads."""

    name: str
    prefix: str
    pooler: bool
    heads: frozenset[str]


ARCHS = (
    Arch("GPT2Model", "", False, frozenset()),
    Arch("GPT2LMHeadModel", "transformer.", False, frozenset({"lm"})),
    Arch("GPT2ForSequenceClassification", "transformer.", False, frozenset({"seq_cls"})),
    Arch("GPT2ForTokenClassification", "transformer.", False, frozenset({"token_cls"})),
    Arch("BertModel", "", True, frozenset()),
    Arch("BertForPreTraining", "bert.", True, frozenset({"mlm", "nsp"})),
    # BertForMaskedLM and BertForTokenClassification have no pooler: it is left out on export
    Arch("BertForMaskedLM", "bert.", False, frozenset({"mlm"})),
    Arch("BertForNextSentencePrediction", "bert.", True, frozenset({"nsp"})),
    Arch("BertForSequenceClassification", "bert.", True, frozenset({"seq_cls"})),
    Arch("BertForTokenClassification", "bert.", False, frozenset({"token_cls"})),
)


@dataclass(frozen=True)
class Entry:
    """One of our keys and the HF key(s) it maps to.

    Several HF keys are concatenated along dim 0 into ours (BERT query/key/value -> qkv);
    `transpose` marks GPT-2's Conv1D, which stores weights as [in, out] instead of [out, in].
    """

    ours: str
    hf: tuple[str, ...]
    transpose: bool = False


def hf_architecture(family: str, heads: Sequence[str]) -> Arch:
    """The Hugging Face class holding exactly this backbone and these heads."""
    want = frozenset(heads)
    for arch in ARCHS:
        if arch.name.startswith("GPT2" if family == "gpt" else "Bert") and arch.heads == want:
            return arch
    raise ConfigError(f"no Hugging Face {family} class holds exactly the heads {sorted(want)}")


def _pair(ours: str, hf: str, transpose: bool = False) -> list[Entry]:
    """weight + bias entries for a Linear/LayerNorm `ours` <-> `hf` (bias never transposed)."""
    return [
        Entry(f"{ours}.weight", (f"{hf}.weight",), transpose),
        Entry(f"{ours}.bias", (f"{hf}.bias",)),
    ]


def _gpt_backbone(n_layers: int, p: str) -> list[Entry]:
    out = [Entry("backbone.tok_emb.weight", (f"{p}wte.weight",))]
    out.append(Entry("backbone.pos_emb.weight", (f"{p}wpe.weight",)))
    for i in range(n_layers):
        ours, hf = f"backbone.blocks.{i}", f"{p}h.{i}"
        out += _pair(f"{ours}.ln_attn", f"{hf}.ln_1")
        out += _pair(f"{ours}.attn.qkv", f"{hf}.attn.c_attn", transpose=True)
        out += _pair(f"{ours}.attn.proj", f"{hf}.attn.c_proj", transpose=True)
        out += _pair(f"{ours}.ln_mlp", f"{hf}.ln_2")
        out += _pair(f"{ours}.mlp.fc", f"{hf}.mlp.c_fc", transpose=True)
        out += _pair(f"{ours}.mlp.proj", f"{hf}.mlp.c_proj", transpose=True)
    return out + _pair("backbone.ln_f", f"{p}ln_f")


def _bert_backbone(n_layers: int, p: str, pooler: bool) -> list[Entry]:
    e = f"{p}embeddings"
    out = [
        Entry("backbone.tok_emb.weight", (f"{e}.word_embeddings.weight",)),
        Entry("backbone.pos_emb.weight", (f"{e}.position_embeddings.weight",)),
        Entry("backbone.type_emb.weight", (f"{e}.token_type_embeddings.weight",)),
        *_pair("backbone.emb_ln", f"{e}.LayerNorm"),
    ]
    for i in range(n_layers):
        ours, hf = f"backbone.blocks.{i}", f"{p}encoder.layer.{i}"
        for kind in ("weight", "bias"):
            qkv = tuple(f"{hf}.attention.self.{n}.{kind}" for n in ("query", "key", "value"))
            out.append(Entry(f"{ours}.attn.qkv.{kind}", qkv))
        out += _pair(f"{ours}.attn.proj", f"{hf}.attention.output.dense")
        out += _pair(f"{ours}.ln_attn", f"{hf}.attention.output.LayerNorm")
        out += _pair(f"{ours}.mlp.fc", f"{hf}.intermediate.dense")
        out += _pair(f"{ours}.mlp.proj", f"{hf}.output.dense")
        out += _pair(f"{ours}.ln_mlp", f"{hf}.output.LayerNorm")
    return out + (_pair("backbone.pooler", f"{p}pooler.dense") if pooler else [])


def _head_entries(family: str, head: str) -> list[Entry]:
    if head == "lm":
        return [Entry("heads.lm.weight", ("lm_head.weight",))]
    if head == "mlm":
        return [
            *_pair("heads.mlm.transform", "cls.predictions.transform.dense"),
            *_pair("heads.mlm.ln", "cls.predictions.transform.LayerNorm"),
            Entry("heads.mlm.decoder.weight", ("cls.predictions.decoder.weight",)),
            Entry("heads.mlm.bias", ("cls.predictions.bias",)),
        ]
    if head == "nsp":
        return _pair("heads.nsp.proj", "cls.seq_relationship")
    if head == "seq_cls" and family == "gpt":
        return [Entry("heads.seq_cls.proj.weight", ("score.weight",))]  # no bias in GPT-2
    return _pair(f"heads.{head}.proj", "classifier")


def key_map(config: ModelConfig, heads: Sequence[str], prefix: str, pooler: bool) -> list[Entry]:
    """Every entry for a model of `config` with `heads`, HF backbone keys under `prefix`."""
    if config.family == "gpt":
        out = _gpt_backbone(config.n_layers, prefix)
    else:
        out = _bert_backbone(config.n_layers, prefix, pooler)
    for head in heads:
        out += _head_entries(config.family, head)
    return out


def to_hf_state_dict(model: LanguageModel, include_tied: bool = True) -> dict[str, torch.Tensor]:
    """The model's weights under Hugging Face keys (fresh tensors; tied keys share one tensor).

    `include_tied=False` leaves out keys HF re-ties on load (lm_head / decoder weight, and the
    decoder bias when tied) and shares no storage, as safetensors files require.
    """
    config, heads = model.config, tuple(model.heads)
    arch = hf_architecture(config.family, heads)
    ours = model.state_dict()
    tied = model.tied_parameter_names()
    entries = key_map(config, heads, arch.prefix, arch.pooler)
    hf_of = {e.ours: e.hf[0] for e in entries}
    out: dict[str, torch.Tensor] = {}
    for e in entries:
        if e.ours in tied:
            continue
        pieces = ours[e.ours].detach().chunk(len(e.hf), dim=0)
        for key, t in zip(e.hf, pieces):
            out[key] = (t.t() if e.transpose else t).contiguous().clone()
    if include_tied:
        for e in entries:
            if e.ours in tied:
                out[e.hf[0]] = out[hf_of[tied[e.ours]]]
    if "mlm" in heads and (include_tied or not config.tie_embeddings):
        # HF re-ties decoder.bias on load only when the embeddings are tied; else it is read
        bias = out[_HF_BIAS_ALIAS[1]]
        out[_HF_BIAS_ALIAS[0]] = bias if include_tied else bias.clone()
    return out


def _optional(key: str) -> bool:
    """Keys an import may lack: they keep their fresh initialisation (HF does the same)."""
    head = key.split(".")[1] if key.startswith("heads.") else ""
    return key.startswith("backbone.pooler.") or head in _FINETUNE_HEADS


def _backbone_prefix(hf_sd: Mapping[str, torch.Tensor], family: str) -> str:
    prefix = "transformer." if family == "gpt" else "bert."
    return prefix if any(k.startswith(prefix) for k in hf_sd) else ""


def from_hf_state_dict(
    hf_sd: Mapping[str, torch.Tensor], config: ModelConfig, heads: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Our state dict from a Hugging Face one (a bare GPT2Model/BertModel or a class with heads).

    Tied head weights are filled from the token table. BERT's pooler and fine-tuning heads may
    be absent (the caller keeps their init); anything else missing, or any unknown key, raises
    CheckpointError. Weights of HF heads not asked for are dropped.
    """
    if _HF_BIAS_ALIAS[0] in hf_sd:
        # HF adds decoder.bias in forward; untied (transformers >= 5) it is not cls.predictions.bias
        hf_sd = {**hf_sd, _HF_BIAS_ALIAS[1]: hf_sd[_HF_BIAS_ALIAS[0]]}
    prefix = _backbone_prefix(hf_sd, config.family)
    entries = key_map(config, heads, prefix, pooler=True)
    tied = set(TIED_HEAD_KEYS) if config.tie_embeddings else set()
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    for e in entries:
        if e.ours in tied:
            used.update(e.hf)  # the checkpoint's copy (if any) equals the token table
            continue
        absent = [k for k in e.hf if k not in hf_sd]
        if absent:
            missing += [] if _optional(e.ours) else absent
            continue
        t = torch.cat([hf_sd[k] for k in e.hf], dim=0) if len(e.hf) > 1 else hf_sd[e.hf[0]]
        out[e.ours] = t.t().contiguous() if e.transpose else t
        used.update(e.hf)
    for e in entries:
        if e.ours in tied and "backbone.tok_emb.weight" in out:
            out[e.ours] = out["backbone.tok_emb.weight"]
    unexpected = [k for k in hf_sd if k not in used and not _ignorable(k)]
    if missing or unexpected:
        raise CheckpointError(
            f"Hugging Face weights do not fit this {config.family} model "
            f"({config.n_layers} layers, heads {list(heads)}): "
            f"missing {missing[:4]}, unexpected {unexpected[:4]}"
        )
    return out


def _ignorable(key: str) -> bool:
    return key.endswith(_HF_IGNORED_SUFFIXES) or key.startswith(_HF_HEAD_PREFIXES)


def load_hf_state_dict(model: LanguageModel, hf_sd: Mapping[str, torch.Tensor]) -> list[str]:
    """Import HF weights into `model` in place; returns our keys left at their initialisation."""
    sd = from_hf_state_dict(hf_sd, model.config, tuple(model.heads))
    try:
        result = model.load_state_dict(sd, strict=False)
    except RuntimeError as err:  # shape mismatch: a config that does not describe the weights
        first = str(err).strip().splitlines()[-1].strip()
        raise CheckpointError(f"Hugging Face weights do not fit the model config: {first}") from err
    return list(result.missing_keys)


def hf_config_dict(
    config: ModelConfig, heads: Sequence[str] | None = None, n_labels: int = 0
) -> dict:
    """A config.json body for GPT2Config / BertConfig. `heads` default: the pretraining heads."""
    if heads is None:
        heads = ("lm",) if config.family == "gpt" else ("mlm", "nsp")
    arch = hf_architecture(config.family, heads)
    common: dict = {"architectures": [arch.name], "vocab_size": config.vocab_size}
    common |= {"initializer_range": INIT_STD, "tie_word_embeddings": config.tie_embeddings}
    if n_labels:
        common["id2label"] = {str(i): f"LABEL_{i}" for i in range(n_labels)}
        common["label2id"] = {f"LABEL_{i}": i for i in range(n_labels)}
    if config.family == "gpt":
        return common | {
            "model_type": "gpt2",
            "n_positions": config.n_positions,
            "n_embd": config.d_model,
            "n_layer": config.n_layers,
            "n_head": config.n_heads,
            "n_inner": config.d_ff,
            "activation_function": "gelu_new",
            "resid_pdrop": config.dropout,
            "embd_pdrop": config.dropout,
            "attn_pdrop": config.attn_dropout,
            "layer_norm_epsilon": config.layer_norm_eps,
            "summary_first_dropout": config.dropout,
        }
    return common | {
        "model_type": "bert",
        "hidden_size": config.d_model,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "intermediate_size": config.d_ff,
        "hidden_act": "gelu",
        "hidden_dropout_prob": config.dropout,
        "attention_probs_dropout_prob": config.attn_dropout,
        "max_position_embeddings": config.n_positions,
        "type_vocab_size": config.type_vocab_size,
        "layer_norm_eps": config.layer_norm_eps,
        "position_embedding_type": "absolute",
    }


def heads_from_hf(config_json: Mapping) -> tuple[str, ...]:
    """Our head names for the first class in `architectures` (empty for a bare backbone)."""
    names = config_json.get("architectures") or []
    for arch in ARCHS:
        if names and arch.name == names[0]:
            return tuple(h for h in ("lm", "mlm", "nsp", "seq_cls", "token_cls") if h in arch.heads)
    return ()


def model_config_from_hf(config_json: Mapping) -> ModelConfig:
    """A ModelConfig from a Hugging Face config.json body (model_type gpt2 or bert)."""
    kind = config_json.get("model_type")
    c = config_json
    if kind == "gpt2":
        _require(c, "activation_function", ("gelu_new", "gelu_pytorch_tanh"), "gelu_new")
        _require(c, "scale_attn_by_inverse_layer_idx", (False,), False)
        d = c.get("n_embd", 768)
        return ModelConfig(
            family="gpt",
            vocab_size=c.get("vocab_size", 50257),
            d_model=d,
            n_layers=c.get("n_layer", 12),
            n_heads=c.get("n_head", 12),
            d_ff=c.get("n_inner") or 4 * d,
            max_seq_len=c.get("n_positions", 1024),
            n_positions=c.get("n_positions", 1024),
            dropout=c.get("resid_pdrop", 0.1),
            attn_dropout=c.get("attn_pdrop", 0.1),
            layer_norm_eps=c.get("layer_norm_epsilon", 1e-5),
            tie_embeddings=c.get("tie_word_embeddings", True),
        )
    if kind == "bert":
        _require(c, "hidden_act", ("gelu",), "gelu")
        _require(c, "position_embedding_type", ("absolute",), "absolute")
        return ModelConfig(
            family="bert",
            vocab_size=c.get("vocab_size", 30522),
            d_model=c.get("hidden_size", 768),
            n_layers=c.get("num_hidden_layers", 12),
            n_heads=c.get("num_attention_heads", 12),
            d_ff=c.get("intermediate_size", 3072),
            max_seq_len=c.get("max_position_embeddings", 512),
            n_positions=c.get("max_position_embeddings", 512),
            dropout=c.get("hidden_dropout_prob", 0.1),
            attn_dropout=c.get("attention_probs_dropout_prob", 0.1),
            layer_norm_eps=c.get("layer_norm_eps", 1e-12),
            type_vocab_size=c.get("type_vocab_size", 2),
            tie_embeddings=c.get("tie_word_embeddings", True),
        )
    raise CheckpointError(f"unsupported Hugging Face model_type '{kind}' (supported: gpt2, bert)")


def _require(c: Mapping, key: str, allowed: tuple, default: object) -> None:
    if c.get(key, default) not in allowed:
        raise CheckpointError(f"unsupported Hugging Face {key} '{c[key]}' (supported: {allowed})")
