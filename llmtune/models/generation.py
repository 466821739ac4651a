"""Text generation from a decoder (its `lm` head): greedy or sampled (temperature, top-k,
top-p), one prompt at a time, with a key/value cache so each new token costs one position."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from llmtune.config.schema import EvaluateConfig


@dataclass
class Generation:
    """One completion: the new token ids and why generation stopped."""

    token_ids: list[int]
    stop_reason: str  # eos | max_new_tokens | context (max_seq_len positions are used)
    prompt_tokens: int


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Set logits [B,V] outside the top-k and outside the top-p nucleus to -inf.

    The nucleus is the smallest set of likeliest tokens whose probability reaches top_p;
    the likeliest token always stays, so sampling never runs out of candidates.
    """
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # [B,1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the tokens before it already reach top_p
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_token(logits: Tensor, cfg: EvaluateConfig, generator: torch.Generator | None) -> Tensor:
    """Choose the next token [B] from logits [B,V]: argmax at temperature 0, else sample."""
    if cfg.temperature == 0:
        return logits.argmax(-1)
    filtered = filter_logits(logits.float() / cfg.temperature, cfg.top_k, cfg.top_p)
    return torch.multinomial(filtered.softmax(-1), 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    prompt_ids: list[int],
    cfg: EvaluateConfig,
    eos_id: int | None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> Generation:
    """Complete one prompt. Without `use_cache` every step re-reads the whole sequence
    (the reference the cached path is tested against)."""
    model.eval()
    device = next(model.parameters()).device
    # positions past max_seq_len were never trained, so the context stops there
    limit = model.config.max_seq_len
    # keep the end of an over-long prompt: the next token depends most on what is nearest
    prompt_ids = prompt_ids[-limit:] if prompt_ids else [eos_id if eos_id is not None else 0]
    ids = torch.tensor([prompt_ids], device=device)  # [1,T]
    new: list[int] = []
    past = None
    reason = "max_new_tokens"
    step_input = ids
    while len(new) < cfg.max_new_tokens:
        if use_cache:
            hidden, past = model(step_input, past=past, use_cache=True)
        else:
            hidden = model(ids)
        logits = model.heads["lm"](hidden[:, -1])  # [1,V]: only the last position matters
        token = next_token(logits, cfg, generator)  # [1]
        new.append(int(token))
        if cfg.stop_at_eos and eos_id is not None and new[-1] == eos_id:
            reason = "eos"
            break
        if ids.shape[1] + 1 > limit and len(new) < cfg.max_new_tokens:
            reason = "context"
            break
        step_input = token.view(1, 1)
        ids = torch.cat([ids, step_input], dim=1)
    return Generation(new, reason, len(prompt_ids))
