"""The GPT-2 family: its config, the backbone (token + learned position embeddings, pre-LN
causal blocks, final LayerNorm), its heads, init and Hugging Face GPT-2 mapping.

Packed sequences pass `doc_ids` so documents neither see each other nor share positions;
left-padded generation batches pass `attention_mask` so padding is neither seen nor counted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from llmtune.config.schema import ModelConfig
from llmtune.errors import CheckpointError, ConfigError
from llmtune.models.blocks import KV, Block, GrowingKV, run_blocks
from llmtune.models.family import (
    Arch,
    Entry,
    Family,
    HFMapping,
    Kind,
    init_weights,
    pair,
    scale_residual_projections,
    tied_weight,
)
from llmtune.models.heads import LMHead, task_head


@dataclass(frozen=True)
class GPTConfig(ModelConfig):
    """GPT-2: learned positions, pre-LN blocks with GELU (tanh), a final LayerNorm."""

    family: str = "gpt"  # registered family name (models/registry.py): bert, gpt, ...
    n_positions: int = 1024  # size of the learned position table; max_seq_len must fit in it
    layer_norm_eps: float = 1e-5  # epsilon of every LayerNorm (GPT-2 uses 1e-5)
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


def check_layer_heads(config: GPTConfig | ModelConfig) -> None:
    """model.layer_heads is empty or one head count in 1..n_heads per block."""
    heads = list(config.layer_heads)
    if heads and (
        len(heads) != config.n_layers or not all(1 <= h <= config.n_heads for h in heads)
    ):
        raise ConfigError(
            f"model.layer_heads={heads}: needs one count in 1..{config.n_heads} (model.n_heads) "
            f"per block ({config.n_layers} blocks), or none"
        )


def check_position_table(config: ModelConfig) -> None:
    """model.n_positions is positive and holds model.max_seq_len (learned position tables)."""
    n = config.max_positions
    if n <= 0:
        raise ConfigError(f"model.n_positions={n}: must be positive")
    if config.max_seq_len > n:
        raise ConfigError(
            f"model.max_seq_len={config.max_seq_len} exceeds the position table "
            f"(model.n_positions={n})"
        )


def document_positions(doc_ids: torch.Tensor) -> torch.Tensor:
    """Position ids [B,T] that restart at 0 wherever `doc_ids` [B,T] changes value.

    Assumes each document is contiguous (packing concatenates whole documents).
    """
    t = doc_ids.shape[1]
    idx = torch.arange(t, device=doc_ids.device).expand_as(doc_ids)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    # running max of "index where the current document began" gives each token its start
    begin = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return idx - begin


def document_causal_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """Boolean [B,1,T,T] mask, True where query i may attend key j: j <= i and same document."""
    t = doc_ids.shape[1]
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]  # [B,T,T]
    causal = torch.ones(t, t, dtype=torch.bool, device=doc_ids.device).tril()
    return (same_doc & causal).unsqueeze(1)  # [B,1,T,T]: broadcast over heads


def padded_positions(
    attention_mask: torch.Tensor, n_past: int, t: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Position ids [B,T] and attention mask [B,1,T,n_past+T] of T new tokens in padded rows.

    `attention_mask` [B,S] (1 = real, 0 = padding) covers the last S of the n_past + T keys;
    keys before those (a learned prefix) are real. A token's position counts the real keys
    before it, so a left-padded row computes exactly what the row alone would. Each query also
    sees itself, so no mask row is empty: torch 2.13's CPU kernels return zeros for a query
    that may attend nothing, but a kernel that returns NaN there would pass it to real rows
    through the next layer's keys and values.
    """
    b, s = attention_mask.shape
    k = n_past + t
    real = attention_mask.bool()
    if s < k:
        real = torch.cat([real.new_ones(b, k - s), real], dim=1)  # [B,K]
    pos = (real.long().cumsum(1)[:, -t:] - 1).clamp_(min=0)  # padding before any real key: 0
    key = torch.arange(k, device=real.device)
    query = torch.arange(n_past, k, device=real.device)[:, None]  # [T,1]: key index of each query
    mask = (real[:, None, :] & (key <= query)) | (key == query)  # [B,T,K]
    return pos, mask.unsqueeze(1)


def positions_and_mask(
    input_ids: torch.Tensor,
    doc_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    start: int,
) -> tuple[torch.Tensor, tuple[torch.Tensor | None, bool]]:
    """Positions [B|1,T] of T new tokens after `start` cached ones, and (mask, is_causal) for
    their attention: a decoder's packed rows (`doc_ids` [B,T]), left-padded generation rows
    (`attention_mask` [B,S]), or plain causal rows."""
    t = input_ids.shape[1]
    if attention_mask is not None:
        if doc_ids is not None:
            raise ValueError("pass doc_ids (packed rows) or attention_mask (padding), not both")
        pos, mask = padded_positions(attention_mask, start, t)
        return pos, (mask, False)
    if doc_ids is not None and bool((doc_ids[:, 0] == doc_ids[:, -1]).all()):
        # every row lies inside one document (documents are contiguous): the document mask
        # equals the causal one, and without a mask SDPA takes its fused causal kernel
        doc_ids = None
    if doc_ids is None:
        # no mask tensor lets SDPA take its fused causal kernel
        pos = torch.arange(start, start + t, device=input_ids.device).unsqueeze(0)  # [1,T]
        return pos, (None, True)
    return document_positions(doc_ids) + start, (document_causal_mask(doc_ids), False)


class CausalReadout:
    """What a causal backbone's task heads read: its features and the pooled last token."""

    def features(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """[B,T,D] of right-padded rows: causal, so padding never reaches a real token."""
        return self(batch["input_ids"])

    def pool(self, hidden: torch.Tensor, last_index: torch.Tensor | None = None) -> torch.Tensor:
        """[B,T,D] -> [B,D]: the state of the last real token (index [B]), else of position T-1.

        A causal model has seen the whole sequence only at its last token.
        """
        if last_index is None:
            return hidden[:, -1]
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last_index]


class GPTBackbone(CausalReadout, nn.Module):
    """GPT-2 transformer without its LM head. `forward` returns hidden states [B,T,D]."""

    input_names = ("input_ids",)  # right padding needs no mask; doc_ids only when packed

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        eps = config.layer_norm_eps
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.n_positions, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            Block(config, eps, pre_ln=True, approximate="tanh", n_heads=config.heads_in(i))
            for i in range(config.n_layers)
        )
        self.ln_f = nn.LayerNorm(config.d_model, eps=eps)

    def forward(
        self,
        input_ids: torch.Tensor,
        doc_ids: torch.Tensor | None = None,
        past: Sequence[KV | GrowingKV] | None = None,
        use_cache: bool = False,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, list[KV | GrowingKV]]:
        """input_ids [B,T]; doc_ids [B,T] (optional) labels packed documents.

        `past` holds one (k, v) per block for P earlier positions: the new tokens take
        positions P..P+T-1 and attend to them. With `use_cache` returns (hidden, cache),
        the cache being the per-block (k, v) including `past`, to pass back as `past`.

        `attention_mask` [B,S] (1 = real token, 0 = padding; generation's left-padded
        batches) covers the last S of the P+T keys, cached ones included: padding is never
        attended and takes no position (see `padded_positions`).

        The generation contract (models/generation.py), for every decoder family:
        `forward(input_ids, past=past, use_cache=True, attention_mask=mask)` returns
        (hidden [B,T,D], cache); cache is one entry per layer, each a (k, v) tuple
        [B,Hkv,positions,hd] or a `GrowingKV` (attention layers pass `past` through
        `blocks.with_past`, which appends to a GrowingKV in place); positions and masking
        follow `attention_mask` as above; a learned prefix or prompt may occupy the first
        cached positions.
        """
        t, n_positions = input_ids.shape[1], self.pos_emb.num_embeddings
        start = 0 if past is None else past[0][0].shape[2]
        if attention_mask is None and start + t > n_positions:
            raise ValueError(f"sequence length {start + t} exceeds n_positions {n_positions}")
        pos, attend = positions_and_mask(input_ids, doc_ids, attention_mask, start)
        # padding takes no position, so padded rows can fit where their length would not
        if attention_mask is not None and int(pos[:, -1].max()) >= n_positions:
            raise ValueError(f"positions exceed n_positions {n_positions}")
        x = self.dropout(self.tok_emb(input_ids) + self.pos_emb(pos))  # [B,T,D]
        x, cache = run_blocks(self.blocks, x, attend, past, use_cache)
        x = self.ln_f(x)
        return (x, cache) if use_cache else x


def build_head(name: str, config: GPTConfig, backbone: nn.Module, n_labels: int) -> nn.Module:
    if name == "lm":
        return LMHead(config, tied_weight(config, backbone))
    # GPT2ForSequenceClassification's `score` has no bias
    return task_head(name, config, n_labels, seq_cls_bias=False)


def init_gpt(model: nn.Module) -> None:
    init_weights(model)
    scale_residual_projections(model, ("attn.proj", "mlp.proj"))


# ---- Hugging Face GPT-2 -------------------------------------------------------------------
ARCHS = (
    Arch("GPT2Model", "", False, frozenset()),
    Arch("GPT2LMHeadModel", "transformer.", False, frozenset({"lm"})),
    Arch("GPT2ForSequenceClassification", "transformer.", False, frozenset({"seq_cls"})),
    Arch("GPT2ForTokenClassification", "transformer.", False, frozenset({"token_cls"})),
)


def key_map(config: GPTConfig, heads: Sequence[str], p: str, pooler: bool) -> list[Entry]:
    """Every entry of a GPT-2 model with `heads`, HF backbone keys under `p`."""
    out = [Entry("backbone.tok_emb.weight", (f"{p}wte.weight",))]
    out.append(Entry("backbone.pos_emb.weight", (f"{p}wpe.weight",)))
    for i in range(config.n_layers):
        ours, hf = f"backbone.blocks.{i}", f"{p}h.{i}"
        out += pair(f"{ours}.ln_attn", f"{hf}.ln_1")
        out += pair(f"{ours}.attn.qkv", f"{hf}.attn.c_attn", transpose=True)
        out += pair(f"{ours}.attn.proj", f"{hf}.attn.c_proj", transpose=True)
        out += pair(f"{ours}.ln_mlp", f"{hf}.ln_2")
        out += pair(f"{ours}.mlp.fc", f"{hf}.mlp.c_fc", transpose=True)
        out += pair(f"{ours}.mlp.proj", f"{hf}.mlp.c_proj", transpose=True)
    out += pair("backbone.ln_f", f"{p}ln_f")
    for head in heads:
        if head == "lm":
            out.append(Entry("heads.lm.weight", ("lm_head.weight",)))
        elif head == "seq_cls":
            out.append(Entry("heads.seq_cls.proj.weight", ("score.weight",)))  # no bias
        else:
            out += pair(f"heads.{head}.proj", "classifier")
    return out


def to_config(config: GPTConfig) -> dict:
    return {
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


def from_config(c: Mapping) -> GPTConfig:
    require_hf(c, "activation_function", ("gelu_new", "gelu_pytorch_tanh"), "gelu_new")
    require_hf(c, "scale_attn_by_inverse_layer_idx", (False,), False)
    d = c.get("n_embd", 768)
    return GPTConfig(
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


def require_hf(c: Mapping, key: str, allowed: tuple, default: object) -> None:
    """Refuse a config.json whose `key` selects a variant llmtune does not implement."""
    if c.get(key, default) not in allowed:
        raise CheckpointError(f"unsupported Hugging Face {key} '{c[key]}' (supported: {allowed})")


GPT = Family(
    name="gpt",
    kind=Kind.DECODER,
    config=GPTConfig,
    backbone=GPTBackbone,
    heads=("lm", "seq_cls", "token_cls", "reward", "value"),
    build_head=build_head,
    native_objective="clm",
    tokenizer="bpe",
    lm_head="lm",
    hf=HFMapping(
        model_types=("gpt2",),
        archs=ARCHS,
        backbone_prefix="transformer.",
        pretraining_heads=("lm",),
        key_map=key_map,
        to_config=to_config,
        from_config=from_config,
    ),
    init_weights=init_gpt,
)
