"""The model-family protocol: what one family (models/<family>.py) declares to be registered.

A family is a name, a kind (encoder | decoder | encoder_decoder), its config dataclass, its
backbone class, the heads it builds, its native objective and tokenizer, its weight init and
its Hugging Face mapping. Everything above models/ asks the family (or its kind), never a name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from torch import Tensor, nn

from llmtune.config.schema import ModelConfig
from llmtune.models.heads import LMHead, MLMHead

INIT_STD = 0.02


class Kind(StrEnum):
    """What a family's backbone computes, which is what objectives and exporters depend on."""

    ENCODER = "encoder"  # bidirectional; reads attention_mask (and maybe token_type_ids)
    DECODER = "decoder"  # causal; forward(input_ids, doc_ids, past, use_cache): LM + KV cache
    ENCODER_DECODER = "encoder_decoder"  # its own forward; objectives of its kind know it


class Backbone(Protocol):
    """What every backbone offers (it is an nn.Module; attribute names are checkpoint keys).

    `input_names`: the keys of a batch of right-padded rows it reads, input_ids first (an
    exported graph takes these plus attention_mask); `features`: hidden states [B,T,D] of
    such a batch; `pool`: one vector per row [B,D] from those states and each row's last
    real position.
    """

    input_names: tuple[str, ...]
    tok_emb: nn.Embedding
    blocks: nn.ModuleList

    def features(self, batch: Mapping[str, Tensor]) -> Tensor: ...

    def pool(self, hidden: Tensor, last_index: Tensor | None = None) -> Tensor: ...


@dataclass(frozen=True)
class Arch:
    """A Hugging Face model class: its key prefix, whether it has BERT's pooler, our heads."""

    name: str
    prefix: str
    pooler: bool
    heads: frozenset[str]


@dataclass(frozen=True)
class Entry:
    """One of our keys and the HF key(s) it maps to.

    Several HF keys are concatenated along dim 0 into ours (BERT query/key/value -> qkv);
    `rows` gives each piece's row count when they differ (Llama's grouped-query q/k/v), else
    the pieces are equal. `transpose` marks GPT-2's Conv1D, which stores weights as [in, out].
    """

    ours: str
    hf: tuple[str, ...]
    transpose: bool = False
    rows: tuple[int, ...] = ()


def pair(ours: str, hf: str, transpose: bool = False) -> list[Entry]:
    """weight + bias entries for a Linear/LayerNorm `ours` <-> `hf` (bias never transposed)."""
    return [
        Entry(f"{ours}.weight", (f"{hf}.weight",), transpose),
        Entry(f"{ours}.bias", (f"{hf}.bias",)),
    ]


@dataclass(frozen=True)
class HFMapping:
    """A family's Hugging Face layout, used for import (init_from=hf:) and export (format=hf).

    `key_map(config, heads, prefix, pooler)` lists every Entry of a model with those heads,
    the HF backbone keys under `prefix`; `to_config`/`from_config` convert config.json bodies.
    """

    model_types: tuple[str, ...]  # config.json model_type values this family reads
    archs: tuple[Arch, ...]  # HF classes, the bare backbone first
    backbone_prefix: str  # where a class with heads keeps its backbone ("transformer.")
    pretraining_heads: tuple[str, ...]  # heads of the class exported when none are named
    key_map: Callable[[Any, Sequence[str], str, bool], list[Entry]]
    to_config: Callable[[Any], dict]  # the family's part of config.json
    from_config: Callable[[Mapping], ModelConfig]  # config.json -> the family's config
    # HF keys an import may find absent, read from another key instead (transformers 5 saves
    # a T5 whose config unties the head with lm_head tied to, so stored as, shared)
    fallbacks: Mapping[str, str] = field(default_factory=dict)
    # the HF class name of a config and Arch, when one family maps to several HF model types
    # (llama: LlamaForCausalLM, Qwen2ForCausalLM, ...); None = the Arch's own name
    class_name: Callable[[Any, Arch], str] | None = None


def init_weights(model: nn.Module) -> None:
    """N(0, 0.02) for linears and embeddings, zero biases, unit LayerNorms."""
    for m in model.modules():
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, std=INIT_STD)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        if isinstance(m, LMHead):  # a bare parameter; when tied this redraws the same table
            nn.init.normal_(m.weight, std=INIT_STD)
        if isinstance(m, MLMHead):
            nn.init.zeros_(m.bias)


def scale_residual_projections(model: nn.Module, names: Sequence[str]) -> None:
    """GPT-2's init: each residual output projection (`names` within a block) drawn with std
    0.02 / sqrt(2 * n_layers), so the residual stream's variance does not grow with depth."""
    blocks = model.backbone.blocks
    std = INIT_STD / math.sqrt(2 * len(blocks))
    for block in blocks:
        for name in names:
            nn.init.normal_(block.get_submodule(name).weight, std=std)


@dataclass(frozen=True)
class Family:
    """A registry entry (models/registry.py): everything llmtune needs to know of a family."""

    name: str
    kind: Kind
    config: type[ModelConfig]  # its keys (model.<key>) with their defaults
    backbone: Callable[[Any], nn.Module]  # the backbone class, built from `config`
    heads: tuple[str, ...]  # heads it can build
    # build_head(name, config, backbone, n_labels): one head module for this family
    build_head: Callable[[str, Any, nn.Module, int], nn.Module]
    native_objective: str  # objective=auto on this family (pretraining)
    tokenizer: str  # tokenizer kind trained for it (tokenizer=auto) and the specials it needs
    lm_head: str  # the head that projects onto the vocabulary (gpt: lm, bert: mlm)
    hf: HFMapping
    init_weights: Callable[[nn.Module], None] = init_weights
    # an encoder-decoder's training FLOPs of one example (config, source length, target
    # length): its stacks run at different lengths, which the per-position count cannot say
    training_flops: Callable[[Any, int, int], float] | None = None


def tied_weight(config: ModelConfig, backbone: nn.Module) -> nn.Parameter | None:
    """The token table an output head shares when `tie_embeddings` is set."""
    return backbone.tok_emb.weight if config.tie_embeddings else None
