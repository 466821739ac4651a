"""The GPT-2 backbone: token + learned position embeddings, pre-LN causal blocks, final LayerNorm.

Packed sequences pass `doc_ids` so documents neither see each other nor share positions;
left-padded generation batches pass `attention_mask` so padding is neither seen nor counted.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from llmtune.config.schema import ModelConfig
from llmtune.models.blocks import KV, Block, GrowingKV
from llmtune.models.dropout import Dropout


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


class GPTBackbone(nn.Module):
    """GPT-2 transformer without its LM head. `forward` returns hidden states [B,T,D]."""

    input_names = ("input_ids", "doc_ids")

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.n_positions, config.d_model)
        self.dropout = Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)

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

        The generation contract (evaluation/generation.py), for every decoder family:
        `forward(input_ids, past=past, use_cache=True, attention_mask=mask)` returns
        (hidden [B,T,D], cache); cache is one entry per layer, each a (k, v) tuple
        [B,H,positions,Dh] or a `GrowingKV` (attention layers pass `past` through
        `blocks.with_past`, which appends to a GrowingKV in place); positions and masking
        follow `attention_mask` as above; a learned prefix or prompt may occupy the first
        cached positions.
        """
        t = input_ids.shape[1]
        start = 0 if past is None else past[0][0].shape[2]
        if attention_mask is not None:
            if doc_ids is not None:
                raise ValueError("pass doc_ids (packed rows) or attention_mask (padding), not both")
            pos, mask = padded_positions(attention_mask, start, t)
            if int(pos[:, -1].max()) >= self.pos_emb.num_embeddings:
                raise ValueError(f"positions exceed n_positions {self.pos_emb.num_embeddings}")
            return self._blocks(input_ids, pos, (mask, False), past, use_cache)
        if start + t > self.pos_emb.num_embeddings:
            raise ValueError(
                f"sequence length {start + t} exceeds n_positions {self.pos_emb.num_embeddings}"
            )
        if doc_ids is not None and bool((doc_ids[:, 0] == doc_ids[:, -1]).all()):
            # every row lies inside one document (documents are contiguous): the document mask
            # equals the causal one, and without a mask SDPA takes its fused causal kernel
            doc_ids = None
        if doc_ids is None:
            # no mask tensor lets SDPA take its fused causal kernel
            pos = torch.arange(start, start + t, device=input_ids.device).unsqueeze(0)  # [1,T]
            mask, is_causal = None, True
        else:
            pos = document_positions(doc_ids) + start
            mask, is_causal = document_causal_mask(doc_ids), False
        return self._blocks(input_ids, pos, (mask, is_causal), past, use_cache)

    def _blocks(
        self,
        input_ids: torch.Tensor,
        pos: torch.Tensor,
        attend: tuple[torch.Tensor | None, bool],
        past: Sequence[KV | GrowingKV] | None,
        use_cache: bool,
    ) -> torch.Tensor | tuple[torch.Tensor, list[KV | GrowingKV]]:
        """Embed at positions `pos`, run every block with `attend` = (mask, is_causal)."""
        mask, is_causal = attend
        x = self.dropout(self.tok_emb(input_ids) + self.pos_emb(pos))
        cache: list[KV | GrowingKV] = []
        for i, block in enumerate(self.blocks):
            layer_past = None if past is None else past[i]
            if not use_cache:  # training: a block under FSDP returns one fresh tensor, no views
                x = block(x, mask, is_causal, layer_past)
                continue
            x, kv = block(x, mask, is_causal, layer_past, use_cache=True)
            cache.append(kv)
        x = self.ln_f(x)
        return (x, cache) if use_cache else x

    def pool(self, hidden: torch.Tensor, last_index: torch.Tensor | None = None) -> torch.Tensor:
        """[B,T,D] -> [B,D]: the state of the last real token (index [B]), else of position T-1.

        A causal model has seen the whole sequence only at its last token.
        """
        if last_index is None:
            return hidden[:, -1]
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last_index]
