"""Prompt tuning: `n_tokens` trainable embeddings put before the input at the embedding layer,
optionally produced by P-tuning's MLP or LSTM prompt encoder (a reparametrisation that
trains more stably; the encoder is kept, it is small).

Hooks on the backbone widen the inputs by n_tokens, swap the soft prompt into the token
embeddings, and cut those positions from the output, so heads and objectives see the
same [B, T, D] hidden states as without a prompt.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from llmtune.config.schema import MethodConfig
from llmtune.errors import ConfigError

ENCODERS = ("none", "mlp", "lstm")


@dataclass(frozen=True)
class PromptConfig(MethodConfig):
    """A soft prompt at the input, optionally through P-tuning's MLP/LSTM prompt encoder."""

    name: str = "prompt"  # full | freeze | lora | prefix | prompt
    n_tokens: int = 16  # soft prompt length
    prompt_encoder: str = "none"  # none | mlp | lstm (P-tuning's reparametrisation)
    encoder_hidden: int = 0  # prompt encoder width; 0 = model width

    @property
    def positions(self) -> int:
        return self.n_tokens

    def check(self) -> None:
        if self.n_tokens <= 0:
            raise ConfigError(f"method.n_tokens={self.n_tokens}: must be positive")
        if self.prompt_encoder not in ENCODERS:
            raise ConfigError(
                f"method.prompt_encoder={self.prompt_encoder!r}: expected one of "
                f"{', '.join(ENCODERS)}"
            )
        if self.encoder_hidden < 0:
            raise ConfigError(f"method.encoder_hidden={self.encoder_hidden}: must be >= 0")


class SoftPrompt(nn.Module):
    """`embedding` [P, D], passed through `encoder` (none | mlp | lstm) to give the prompt."""

    def __init__(self, init: torch.Tensor, encoder: str, hidden: int) -> None:
        super().__init__()
        n_tokens, d = init.shape
        self.embedding = nn.Parameter(init.clone())
        self.kind = encoder
        hidden = hidden or d
        if encoder == "lstm":
            self.lstm = nn.LSTM(d, hidden // 2, num_layers=2, bidirectional=True, batch_first=True)
            self.mlp = nn.Sequential(
                nn.Linear(2 * (hidden // 2), hidden), nn.ReLU(), nn.Linear(hidden, d)
            )
        elif encoder == "mlp":
            self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, d))
        self.active = False  # set while a forward pass carries the prompt

    def forward(self) -> torch.Tensor:
        x = self.embedding
        if self.kind == "lstm":
            x = self.lstm(x.unsqueeze(0))[0].squeeze(0)
        if self.kind in ("lstm", "mlp"):
            x = self.mlp(x)
        return x  # [P, D]


def attach_prompt(
    model: nn.Module, n_tokens: int, encoder: str, hidden: int, seed: int
) -> SoftPrompt:
    """Add `model.adapter` (a SoftPrompt) and the hooks that put it before every input.

    The prompt starts as the embeddings of n_tokens random vocabulary tokens (Lester et al.:
    better than random vectors, which sit far from anything the model has seen).
    """
    cfg, backbone = model.config, model.backbone
    if cfg.max_seq_len + n_tokens > cfg.max_positions:
        raise ConfigError(
            f"method.n_tokens={n_tokens} + model.max_seq_len={cfg.max_seq_len} exceed the "
            f"model.s {cfg.max_positions} positions; lower one of them"
        )
    table = backbone.tok_emb.weight
    rows = torch.randint(table.shape[0], (n_tokens,), generator=torch.Generator().manual_seed(seed))
    prompt = SoftPrompt(table.detach()[rows.to(table.device)], encoder, hidden).to(table.device)
    model.add_module("adapter", prompt)
    signature = inspect.signature(backbone.forward)

    def widen(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        bound = signature.bind(*args, **kwargs).arguments
        if bound.get("past") is not None:  # a generation cache already holds the prompt
            return args, kwargs
        ids = bound.pop("input_ids")
        b = ids.shape[0]
        bound["input_ids"] = torch.cat([ids.new_zeros(b, n_tokens), ids], 1)
        fill = {"attention_mask": 1, "token_type_ids": 0}
        for key, value in fill.items():
            if bound.get(key) is not None:
                bound[key] = torch.cat([bound[key].new_full((b, n_tokens), value), bound[key]], 1)
        if bound.get("doc_ids") is not None:  # the prompt belongs to each row's first document
            first = bound["doc_ids"][:, :1].expand(b, n_tokens)
            bound["doc_ids"] = torch.cat([first, bound["doc_ids"]], 1)
        prompt.active = True
        return (), bound

    def swap_in(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        if not prompt.active:
            return out
        soft = prompt().to(out.dtype).expand(out.shape[0], -1, -1)  # [B,P,D]
        return torch.cat([soft, out[:, n_tokens:]], 1)

    def cut(module: nn.Module, args: tuple, kwargs: dict, out):
        if not prompt.active:
            return out
        prompt.active = False
        if isinstance(out, tuple):  # (hidden, cache): the cache keeps the prompt positions
            return (out[0][:, n_tokens:], *out[1:])
        return out[:, n_tokens:]

    backbone.register_forward_pre_hook(widen, with_kwargs=True)
    backbone.tok_emb.register_forward_hook(swap_in)
    backbone.register_forward_hook(cut, with_kwargs=True)
    return prompt
