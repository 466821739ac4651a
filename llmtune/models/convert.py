"""Conversion between llmtune state dicts and Hugging Face layouts, through each family's
one key map (its HFMapping): import (`from_hf_state_dict`), export (`to_hf_state_dict`),
and config.json both ways."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from llmtune.config.schema import ModelConfig
from llmtune.errors import CheckpointError, ConfigError
from llmtune.models import registry
from llmtune.models.family import INIT_STD, Arch, Entry
from llmtune.models.model import LanguageModel

# Our head weights that share storage with the token table when tie_embeddings is set.
TIED_HEAD_KEYS = ("heads.lm.weight", "heads.mlm.decoder.weight")
# HF keys that are buffers or aliases, never weights of their own (T5's stacks alias its
# shared table; old T5 files hold a cross-attention position table no layer reads; old Llama
# checkpoints saved RoPE's frequencies).
_HF_IGNORED_SUFFIXES = (
    "embeddings.position_ids",
    ".attn.bias",
    ".attn.masked_bias",
    "encoder.embed_tokens.weight",
    "decoder.embed_tokens.weight",
    "EncDecAttention.relative_attention_bias.weight",
    ".rotary_emb.inv_freq",  # old Llama checkpoints saved RoPE's frequencies
)
_HF_BIAS_ALIAS = ("cls.predictions.decoder.bias", "cls.predictions.bias")
# HF head prefixes an import may drop when the head was not asked for (e.g. fine-tuning
# from a pretraining checkpoint).
_HF_HEAD_PREFIXES = ("lm_head.", "cls.", "classifier.", "score.")
_FINETUNE_HEADS = ("seq_cls", "token_cls")


def hf_architecture(family: str, heads: Sequence[str]) -> Arch:
    """The Hugging Face class holding exactly this backbone and these heads."""
    want = frozenset(heads)
    for arch in registry.family(family).hf.archs:
        if arch.heads == want:
            return arch
    raise ConfigError(f"no Hugging Face {family} class holds exactly the heads {sorted(want)}")


def key_map(config: ModelConfig, heads: Sequence[str], prefix: str, pooler: bool) -> list[Entry]:
    """Every entry for a model of `config` with `heads`, HF backbone keys under `prefix`."""
    return registry.family(config.family).hf.key_map(config, heads, prefix, pooler)


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
        weight = ours[e.ours].detach()
        pieces = weight.split(list(e.rows)) if e.rows else weight.chunk(len(e.hf), dim=0)
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
    prefix = registry.family(family).hf.backbone_prefix
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
    fallbacks = registry.family(config.family).hf.fallbacks
    absent = {k: hf_sd[v] for k, v in fallbacks.items() if k not in hf_sd and v in hf_sd}
    hf_sd = {**hf_sd, **absent} if absent else hf_sd
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


def hf_class_name(config: ModelConfig, heads: Sequence[str]) -> str:
    """The Hugging Face class name of a model of `config` with exactly `heads`."""
    arch = hf_architecture(config.family, heads)
    name_of = registry.family(config.family).hf.class_name
    return arch.name if name_of is None else name_of(config, arch)


def hf_config_dict(
    config: ModelConfig, heads: Sequence[str] | None = None, n_labels: int = 0
) -> dict:
    """A config.json body for the family's HF config. `heads` default: the pretraining heads."""
    if getattr(config, "layer_heads", None):
        raise ConfigError(
            f"model.layer_heads={list(config.layer_heads)}: a head-pruned model has no Hugging "
            "Face config (one head count for every layer there); export it with format=pt2 or "
            "format=onnx"
        )
    mapping = registry.family(config.family).hf
    name = hf_class_name(config, mapping.pretraining_heads if heads is None else heads)
    common: dict = {"architectures": [name], "vocab_size": config.vocab_size}
    common |= {"initializer_range": INIT_STD, "tie_word_embeddings": config.tie_embeddings}
    if n_labels:
        common["id2label"] = {str(i): f"LABEL_{i}" for i in range(n_labels)}
        common["label2id"] = {f"LABEL_{i}": i for i in range(n_labels)}
    return common | mapping.to_config(config)


def heads_from_hf(config_json: Mapping) -> tuple[str, ...]:
    """Our head names for the first class in `architectures` (empty for a bare backbone)."""
    names = config_json.get("architectures") or []
    for fam in registry.FAMILIES.values():
        for arch in fam.hf.archs:
            if names and arch.name == names[0]:
                return tuple(h for h in fam.heads if h in arch.heads)
    return ()


def model_config_from_hf(config_json: Mapping) -> ModelConfig:
    """A model config from a Hugging Face config.json body, by its model_type."""
    kind = config_json.get("model_type")
    for fam in registry.FAMILIES.values():
        if kind in fam.hf.model_types:
            return fam.hf.from_config(config_json)
    supported = ", ".join(t for f in registry.FAMILIES.values() for t in f.hf.model_types)
    raise CheckpointError(f"unsupported Hugging Face model_type '{kind}' (supported: {supported})")
