"""The T5 family: backbone (shared embedding, encoder, decoder), LM head, decoder cache,
initialisation, training FLOPs and the registry entry. Layers and the config live in
models/t5_layers.py, the Hugging Face mapping in models/t5_convert.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from llmtune.models.family import Family, Kind, tied_weight
from llmtune.models.t5_convert import HF
from llmtune.models.t5_layers import (
    KV,
    DecoderBlock,
    EncoderBlock,
    FeedForward,
    RelativePositionBias,
    RMSNorm,
    T5Config,
)

# T5 starts decoding from <pad>, id 0 in T5 vocabularies (ours put it first; data/tokenizer.py
# refuses a unigram tokenizer where it is not), as config.json's decoder_start_token_id says.
DECODER_START_ID = 0


def padding_bias(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """[B,S] 1 = token, 0 = padding -> additive [B,1,1,S]: 0 or the dtype's most negative."""
    if attention_mask is None:
        return None
    blocked = (attention_mask == 0)[:, None, None, :]
    return torch.zeros(blocked.shape, dtype=dtype, device=blocked.device).masked_fill(
        blocked, torch.finfo(dtype).min
    )


@dataclass
class DecoderCache:
    """What generation keeps between decoder steps: each block's self-attention keys/values
    (growing by one position a step) and its cross-attention keys/values of the encoder
    output (computed once), plus the encoder padding mask."""

    self_kv: list[KV]
    cross_kv: list[KV]
    memory_mask: torch.Tensor | None

    @property
    def length(self) -> int:
        """Decoder positions already cached."""
        return self.self_kv[0][0].shape[2] if self.self_kv else 0

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows `index` [N] of the self-attention cache (beam search's surviving beams).
        Cross-attention rows are not touched: beams of one input share the same memory."""
        self.self_kv = [
            (k.index_select(0, index), v.index_select(0, index)) for k, v in self.self_kv
        ]


class Memory(NamedTuple):
    """The encoder's output [B,S,D] and the padding mask [B,S] that goes with it."""

    states: torch.Tensor
    mask: torch.Tensor | None


class T5Encoder(nn.Module):
    """Bidirectional blocks sharing one position bias, then the final norm."""

    def __init__(self, config: T5Config) -> None:
        super().__init__()
        self.rel_bias = RelativePositionBias(config, bidirectional=True)
        self.blocks = nn.ModuleList(EncoderBlock(config) for _ in range(config.n_layers))
        self.ln_f = RMSNorm(config.d_model, config.norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None) -> Memory:
        """Embedded inputs x [B,S,D], attention_mask [B,S] (1 = token) -> Memory. A module of
        its own so that a soft prompt can be put before x (adapters/prompt.py)."""
        s = x.shape[1]
        bias = self.rel_bias(s, s)  # [1,H,S,S], shared by every block
        pad = padding_bias(attention_mask, bias.dtype)
        if pad is not None:
            bias = bias + pad  # [B,H,S,S]
        for block in self.blocks:
            x = block(x, bias)
        return Memory(self.dropout(self.ln_f(x)), attention_mask)


class T5Decoder(nn.Module):
    """Causal blocks with cross-attention, sharing one position bias, then the final norm."""

    def __init__(self, config: T5Config) -> None:
        super().__init__()
        self.rel_bias = RelativePositionBias(config, bidirectional=False)
        self.blocks = nn.ModuleList(DecoderBlock(config) for _ in range(config.decoder_layers))
        self.ln_f = RMSNorm(config.d_model, config.norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: DecoderCache) -> torch.Tensor:
        """Embedded decoder inputs x [B,T,D] at positions cache.length.. -> states [B,T,D]."""
        t, past = x.shape[1], cache.length
        bias = self.rel_bias(t, past + t, offset=past)  # [1,H,T,P+T]
        if t > 1:  # a single new position may see every key: no causal mask needed
            future = torch.ones(t, past + t, dtype=torch.bool, device=x.device).triu(past + 1)
            bias = bias.masked_fill(future, torch.finfo(bias.dtype).min)
        new_kv = []
        for i, block in enumerate(self.blocks):
            layer_past = cache.self_kv[i] if past else None
            x, kv = block(x, bias, cache.cross_kv[i], cache.memory_mask, layer_past)
            new_kv.append(kv)
        cache.self_kv = new_kv
        return self.dropout(self.ln_f(x))


class T5Backbone(nn.Module):
    """Shared token embedding, encoder and decoder. `forward` returns decoder hidden states."""

    input_names = ("input_ids", "attention_mask", "decoder_input_ids")

    def __init__(self, config: T5Config) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = T5Encoder(config)
        self.decoder = T5Decoder(config)
        self.dropout = nn.Dropout(config.dropout)

    @property
    def blocks(self) -> list[nn.Module]:
        """Every block in the order data flows: encoder, then decoder (checkpointing,
        sharding and method=freeze go through this list)."""
        return [*self.encoder.blocks, *self.decoder.blocks]

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Memory:
        """input_ids [B,S], attention_mask [B,S] (1 = token) -> the encoder's Memory."""
        return self.encoder(self.dropout(self.tok_emb(input_ids)), attention_mask)

    def start_cache(self, memory: Memory) -> DecoderCache:
        """An empty decoder cache holding each block's cross-attention keys/values of `memory`."""
        cross = [block.cross_attn.memory_kv(memory.states) for block in self.decoder.blocks]
        return DecoderCache([], cross, padding_bias(memory.mask, memory.states.dtype))

    def decode(self, decoder_input_ids: torch.Tensor, cache: DecoderCache) -> torch.Tensor:
        """Decoder hidden states [B,T,D] for T new positions after `cache.length` cached ones;
        the cache grows by T positions."""
        return self.decoder(self.dropout(self.tok_emb(decoder_input_ids)), cache)

    def features(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Hidden states of right-padded rows: with decoder_input_ids the decoder's [B,T,D]
        (teacher-forced; what the lm head projects), else the encoder's [B,S,D] (an
        embedding of the source)."""
        if batch.get("decoder_input_ids") is not None:
            return self(batch["input_ids"], batch.get("attention_mask"), batch["decoder_input_ids"])
        return self.encode(batch["input_ids"], batch.get("attention_mask")).states

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Teacher-forced decoder hidden states [B,T,D]: encode input_ids [B,S], then decode
        decoder_input_ids [B,T] (the targets shifted right behind the start token)."""
        if decoder_input_ids is None:
            raise ValueError("T5Backbone.forward needs decoder_input_ids")
        return self.decode(
            decoder_input_ids, self.start_cache(self.encode(input_ids, attention_mask))
        )


class T5LMHead(nn.Module):
    """Decoder states [..., D] -> logits [..., V]. Tied to the embedding (v1.0) it first scales
    by d_model^-0.5, as Mesh TensorFlow's T5 does; untied (v1.1) it is a plain projection."""

    def __init__(self, config: T5Config, tied_weight: nn.Parameter | None = None) -> None:
        super().__init__()
        # a bare parameter keeps the checkpoint key heads.lm.weight, as the GPT head
        self.scale = config.d_model**-0.5 if tied_weight is not None else 1.0
        if tied_weight is None:
            tied_weight = nn.Parameter(torch.empty(config.vocab_size, config.d_model))
        self.weight = tied_weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.scale != 1.0:
            hidden = hidden * self.scale
        return F.linear(hidden, self.weight)


@torch.no_grad()
def init_t5_weights(model: nn.Module) -> None:
    """Mesh TensorFlow's T5 init (fan-in normals), which stands in for attention's missing
    1/sqrt(d_kv): the query gets std (d_model*d_kv)^-0.5, keys, values and feed-forward inputs
    d_model^-0.5, output projections 1/sqrt(their fan-in), embeddings N(0, 1), norms 1.
    An untied LM head gets d_model^-0.5 (fan-in) so first logits have unit scale; Hugging
    Face's N(0, 1) there would start training at logits of std sqrt(d_model).
    """
    cfg: T5Config = model.config
    d, inner = cfg.d_model, cfg.n_heads * cfg.d_kv
    nn.init.normal_(model.backbone.tok_emb.weight, std=1.0)
    for stack in (model.backbone.encoder, model.backbone.decoder):
        nn.init.normal_(stack.rel_bias.table.weight, std=d**-0.5)
        for block in stack.blocks:
            qkv = block.attn.qkv.weight
            nn.init.normal_(qkv[:inner], std=(d * cfg.d_kv) ** -0.5)
            nn.init.normal_(qkv[inner:], std=d**-0.5)
            nn.init.normal_(block.attn.proj.weight, std=inner**-0.5)
            if hasattr(block, "cross_attn"):
                nn.init.normal_(block.cross_attn.q.weight, std=(d * cfg.d_kv) ** -0.5)
                nn.init.normal_(block.cross_attn.kv.weight, std=d**-0.5)
                nn.init.normal_(block.cross_attn.proj.weight, std=inner**-0.5)
    for m in model.modules():
        if isinstance(m, RMSNorm):
            nn.init.ones_(m.weight)
        if isinstance(m, FeedForward):
            for linear in (m.fc, m.gate) if m.gated else (m.fc,):
                nn.init.normal_(linear.weight, std=d**-0.5)
            nn.init.normal_(m.proj.weight, std=cfg.d_ff**-0.5)
    if "lm" in model.heads and not cfg.tie_embeddings:
        nn.init.normal_(model.heads["lm"].weight, std=d**-0.5)


def build_head(name: str, config: T5Config, backbone: nn.Module, n_labels: int) -> nn.Module:
    """T5's one head, `lm` (the family declares no other)."""
    return T5LMHead(config, tied_weight(config, backbone))


def t5_training_flops(config: T5Config, source_len: int, target_len: int) -> float:
    """Training FLOPs (forward and backward) of one example of `source_len` encoder and
    `target_len` decoder positions, by the 6 x weights + 12 x layers x length x width
    convention: each matmul weight costs 6 per position it is applied at (cross-attention
    keys/values at the source positions), attention 12 x width per (query, key) pair
    (encoder S x S, decoder T x T and T x S), the LM head 6 x V x d per target."""
    d, inner, s, t = config.d_model, config.n_heads * config.d_kv, source_len, target_len
    ff = (3 if config.feed_forward == "gated-gelu" else 2) * d * config.d_ff
    encoder = config.n_layers * (4 * d * inner + ff) * s
    decoder = config.decoder_layers * ((6 * d * inner + ff) * t + 2 * d * inner * s)
    attention = 12 * inner * (config.n_layers * s * s + config.decoder_layers * (t * t + t * s))
    head = 6 * config.vocab_size * d * t
    return float(6 * (encoder + decoder) + attention + head)


T5 = Family(
    name="t5",
    kind=Kind.ENCODER_DECODER,
    config=T5Config,
    backbone=T5Backbone,
    heads=("lm",),
    build_head=build_head,
    native_objective="span_corruption",
    tokenizer="unigram",
    lm_head="lm",
    hf=HF,
    init_weights=init_t5_weights,
    training_flops=t5_training_flops,
)
