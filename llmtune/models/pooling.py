"""Sentence embeddings from a backbone: `cls` (an encoder's first token) or `mean` over real tokens.

Used by the contrastive objective, by `evaluate` (kNN / linear probe) and by exporters,
so an embedding model means the same thing everywhere; the pooling comes from config.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def sentence_embedding(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    pooling: str,
    token_type_ids: Tensor | None = None,
) -> Tensor:
    """[B,T] right-padded rows -> [B,D] unnormalised embeddings."""
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if token_type_ids is not None:
        batch["token_type_ids"] = token_type_ids
    return pool_hidden(model.features(batch), attention_mask, pooling)


def pool_hidden(hidden: Tensor, attention_mask: Tensor, pooling: str) -> Tensor:
    """[B,T,D] hidden states -> [B,D]: the first token (cls) or the mean over real tokens."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling != "mean":
        raise ValueError(f"unknown pooling {pooling!r}")
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [B,T,1]
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


@torch.no_grad()
def embed_rows(model: nn.Module, rows: dict[str, Tensor], pooling: str, batch_size: int) -> Tensor:
    """[N,D] float32 embeddings of padded rows (input_ids, attention_mask), in row order."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(rows["input_ids"]), batch_size):
        part = {k: v[start : start + batch_size] for k, v in rows.items()}
        width = int(part["attention_mask"].sum(1).max())  # drop the split's extra padding
        ids, mask = part["input_ids"][:, :width].to(device), part["attention_mask"][:, :width]
        out.append(sentence_embedding(model, ids, mask.to(device), pooling).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.config.d_model)
