"""The BERT family: its config, the backbone (word + position + token-type embeddings,
post-LN encoder, pooler), its heads and the Hugging Face BERT mapping.

Attention is bidirectional; padding keys are masked out through `attention_mask`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from llmtune.config.schema import ModelConfig
from llmtune.models.blocks import Block
from llmtune.models.family import Arch, Entry, Family, HFMapping, Kind, pair, tied_weight
from llmtune.models.gpt import check_layer_heads, check_position_table, require_hf
from llmtune.models.heads import MLMHead, NSPHead, task_head


@dataclass(frozen=True)
class BertConfig(ModelConfig):
    """BERT: learned positions and token types, post-LN blocks with exact GELU, a pooler."""

    family: str = "bert"  # registered family name (models/registry.py): bert, gpt, ...
    n_positions: int = 512  # size of the learned position table; max_seq_len must fit in it
    layer_norm_eps: float = 1e-12  # epsilon of every LayerNorm (BERT uses 1e-12)
    type_vocab_size: int = 2  # token types (segments A and B)
    per_block_heads: ClassVar[bool] = True
    # heads each block keeps after `llmtune prune prune.heads=...` (empty: n_heads in every block)
    layer_heads: tuple[int, ...] = ()

    def heads_in(self, block: int) -> int:
        return self.layer_heads[block] if self.layer_heads else self.n_heads

    @property
    def max_positions(self) -> int:
        return self.n_positions

    def check(self) -> None:
        check_position_table(self)
        super().check()
        check_layer_heads(self)


class BertBackbone(nn.Module):
    """BERT encoder. `forward` returns hidden states [B,T,D]; `pool` gives the [CLS] summary."""

    input_names = ("input_ids", "token_type_ids", "attention_mask")

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        eps = config.layer_norm_eps
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.n_positions, config.d_model)
        self.type_emb = nn.Embedding(config.type_vocab_size, config.d_model)
        self.emb_ln = nn.LayerNorm(config.d_model, eps=eps)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            Block(config, eps, pre_ln=False, approximate="none", n_heads=config.heads_in(i))
            for i in range(config.n_layers)
        )
        self.pooler = nn.Linear(config.d_model, config.d_model)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids [B,T]; token_type_ids [B,T] (default 0); attention_mask [B,T], 1 = real."""
        t = input_ids.shape[1]
        if t > self.pos_emb.num_embeddings:
            raise ValueError(
                f"sequence length {t} exceeds n_positions {self.pos_emb.num_embeddings}"
            )
        pos = torch.arange(t, device=input_ids.device).unsqueeze(0)  # [1,T]
        x = self.tok_emb(input_ids) + self.pos_emb(pos)
        if token_type_ids is None:
            x = x + self.type_emb.weight[0]  # segment A everywhere, without a [B,T] zeros tensor
        else:
            x = x + self.type_emb(token_type_ids)
        x = self.dropout(self.emb_ln(x))
        mask = None
        if attention_mask is not None:
            # [B,T] -> [B,1,1,T]: every query (and head) ignores the same padding keys
            mask = attention_mask.bool()[:, None, None, :]
        for block in self.blocks:
            x = block(x, mask)
        return x

    def features(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """[B,T,D] of right-padded rows: segments and the padding mask are read."""
        return self(batch["input_ids"], batch.get("token_type_ids"), batch.get("attention_mask"))

    def pool(self, hidden: torch.Tensor, last_index: torch.Tensor | None = None) -> torch.Tensor:
        """[B,T,D] -> [B,D]: dense + tanh on the first ([CLS]) token. `last_index` is unused."""
        return torch.tanh(self.pooler(hidden[:, 0]))


def build_head(name: str, config: BertConfig, backbone: nn.Module, n_labels: int) -> nn.Module:
    if name == "mlm":
        return MLMHead(config, config.layer_norm_eps, tied_weight(config, backbone))
    if name == "nsp":
        return NSPHead(config)
    return task_head(name, config, n_labels)


# ---- Hugging Face BERT --------------------------------------------------------------------
ARCHS = (
    Arch("BertModel", "", True, frozenset()),
    Arch("BertForPreTraining", "bert.", True, frozenset({"mlm", "nsp"})),
    # BertForMaskedLM and BertForTokenClassification have no pooler: it is left out on export
    Arch("BertForMaskedLM", "bert.", False, frozenset({"mlm"})),
    Arch("BertForNextSentencePrediction", "bert.", True, frozenset({"nsp"})),
    Arch("BertForSequenceClassification", "bert.", True, frozenset({"seq_cls"})),
    Arch("BertForTokenClassification", "bert.", False, frozenset({"token_cls"})),
)


def _backbone_keys(n_layers: int, p: str, pooler: bool) -> list[Entry]:
    e = f"{p}embeddings"
    out = [
        Entry("backbone.tok_emb.weight", (f"{e}.word_embeddings.weight",)),
        Entry("backbone.pos_emb.weight", (f"{e}.position_embeddings.weight",)),
        Entry("backbone.type_emb.weight", (f"{e}.token_type_embeddings.weight",)),
        *pair("backbone.emb_ln", f"{e}.LayerNorm"),
    ]
    for i in range(n_layers):
        ours, hf = f"backbone.blocks.{i}", f"{p}encoder.layer.{i}"
        for kind in ("weight", "bias"):
            qkv = tuple(f"{hf}.attention.self.{n}.{kind}" for n in ("query", "key", "value"))
            out.append(Entry(f"{ours}.attn.qkv.{kind}", qkv))
        out += pair(f"{ours}.attn.proj", f"{hf}.attention.output.dense")
        out += pair(f"{ours}.ln_attn", f"{hf}.attention.output.LayerNorm")
        out += pair(f"{ours}.mlp.fc", f"{hf}.intermediate.dense")
        out += pair(f"{ours}.mlp.proj", f"{hf}.output.dense")
        out += pair(f"{ours}.ln_mlp", f"{hf}.output.LayerNorm")
    return out + (pair("backbone.pooler", f"{p}pooler.dense") if pooler else [])


def key_map(config: BertConfig, heads: Sequence[str], p: str, pooler: bool) -> list[Entry]:
    """Every entry of a BERT model with `heads`, HF backbone keys under `p`."""
    out = _backbone_keys(config.n_layers, p, pooler)
    for head in heads:
        if head == "mlm":
            out += [
                *pair("heads.mlm.transform", "cls.predictions.transform.dense"),
                *pair("heads.mlm.ln", "cls.predictions.transform.LayerNorm"),
                Entry("heads.mlm.decoder.weight", ("cls.predictions.decoder.weight",)),
                Entry("heads.mlm.bias", ("cls.predictions.bias",)),
            ]
        elif head == "nsp":
            out += pair("heads.nsp.proj", "cls.seq_relationship")
        else:
            out += pair(f"heads.{head}.proj", "classifier")
    return out


def to_config(config: BertConfig) -> dict:
    return {
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


def from_config(c: Mapping) -> BertConfig:
    require_hf(c, "hidden_act", ("gelu",), "gelu")
    require_hf(c, "position_embedding_type", ("absolute",), "absolute")
    return BertConfig(
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


BERT = Family(
    name="bert",
    kind=Kind.ENCODER,
    config=BertConfig,
    backbone=BertBackbone,
    heads=("mlm", "nsp", "seq_cls", "token_cls", "reward"),
    build_head=build_head,
    native_objective="mlm",
    tokenizer="wordpiece",
    lm_head="mlm",
    hf=HFMapping(
        model_types=("bert",),
        archs=ARCHS,
        backbone_prefix="bert.",
        pretraining_heads=("mlm", "nsp"),
        key_map=key_map,
        to_config=to_config,
        from_config=from_config,
    ),
)
