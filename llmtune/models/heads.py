"""Task heads: each maps backbone features to logits. Losses live in objectives, never here.

Token heads (`lm`, `mlm`, `token_cls`) take hidden states [..., D]; sequence heads (`nsp`,
`seq_cls`) take pooled features [B, D] from `backbone.pool`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmtune.config.schema import ModelConfig
from llmtune.errors import ConfigError


class LMHead(nn.Module):
    """GPT-2 output projection [..., D] -> [..., V], no bias; shares the token table when tied."""

    def __init__(self, config: ModelConfig, tied_weight: nn.Parameter | None = None) -> None:
        super().__init__()
        # a bare parameter (not a Linear) keeps the checkpoint key short: heads.lm.weight
        if tied_weight is None:
            tied_weight = nn.Parameter(torch.empty(config.vocab_size, config.d_model))
        self.weight = tied_weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.weight)


class MLMHead(nn.Module):
    """BERT masked-LM head: dense -> GELU -> LayerNorm, then a (tied) decoder plus its own bias.

    Apply it to the masked positions only: the decoder is the costliest matmul of a BERT step.
    """

    def __init__(self, config: ModelConfig, eps: float, tied_weight: nn.Parameter | None) -> None:
        super().__init__()
        self.transform = nn.Linear(config.d_model, config.d_model)
        self.ln = nn.LayerNorm(config.d_model, eps=eps)
        self.decoder = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if tied_weight is not None:
            self.decoder.weight = tied_weight
        # the bias stays per-head even when the matrix is tied, as in BERT
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = self.ln(F.gelu(self.transform(hidden)))
        return self.decoder(x) + self.bias


class NSPHead(nn.Module):
    """Next-sentence prediction: pooled [B,D] -> [B,2] (0 = B follows A, 1 = B is random)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.proj = nn.Linear(config.d_model, 2)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.proj(pooled)


class SeqClsHead(nn.Module):
    """Sequence classification: dropout + linear on pooled features [B,D] -> [B,n_labels].

    `bias=False` matches Hugging Face's GPT2ForSequenceClassification (its `score` has none).
    """

    def __init__(self, config: ModelConfig, n_labels: int, bias: bool = True) -> None:
        super().__init__()
        self.dropout = nn.Dropout(config.dropout)
        self.proj = nn.Linear(config.d_model, n_labels, bias=bias)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.proj(self.dropout(pooled))


class TokenClsHead(nn.Module):
    """Token classification: dropout + linear per token, [B,T,D] -> [B,T,n_labels]."""

    def __init__(self, config: ModelConfig, n_labels: int) -> None:
        super().__init__()
        self.dropout = nn.Dropout(config.dropout)
        self.proj = nn.Linear(config.d_model, n_labels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(self.dropout(hidden))


class ScalarHead(nn.Module):
    """One number per position or sequence, [..., D] -> [...]: a reward model's score on
    pooled features (`reward`) or PPO's value estimate per token (`value`)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.proj = nn.Linear(config.d_model, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features).squeeze(-1)


# Heads every family builds alike (a family adds its own: lm, mlm, nsp).
TASK_HEADS = ("seq_cls", "token_cls", "reward", "value")


def task_head(
    name: str, config: ModelConfig, n_labels: int, seq_cls_bias: bool = True
) -> nn.Module:
    """seq_cls / token_cls (sized by n_labels) or the scalar reward / value head."""
    if name in ("reward", "value"):
        return ScalarHead(config)
    if name not in ("seq_cls", "token_cls"):
        raise ConfigError(f"unknown head '{name}'")
    if n_labels < 1:
        raise ConfigError(f"head '{name}' needs n_labels >= 1, got {n_labels}")
    if name == "seq_cls":
        return SeqClsHead(config, n_labels, seq_cls_bias)
    return TokenClsHead(config, n_labels)
