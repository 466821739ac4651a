"""The BERT backbone: word + position + token-type embeddings, post-LN encoder, pooler.

Attention is bidirectional; padding keys are masked out through `attention_mask`.
"""

from __future__ import annotations

import torch
from torch import nn

from llmtune.config.schema import ModelConfig
from llmtune.models.blocks import Block
from llmtune.models.dropout import Dropout


class BertBackbone(nn.Module):
    """BERT encoder. `forward` returns hidden states [B,T,D]; `pool` gives the [CLS] summary."""

    input_names = ("input_ids", "token_type_ids", "attention_mask")

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.n_positions, config.d_model)
        self.type_emb = nn.Embedding(config.type_vocab_size, config.d_model)
        self.emb_ln = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
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

    def pool(self, hidden: torch.Tensor, last_index: torch.Tensor | None = None) -> torch.Tensor:
        """[B,T,D] -> [B,D]: dense + tanh on the first ([CLS]) token. `last_index` is unused."""
        return torch.tanh(self.pooler(hidden[:, 0]))
