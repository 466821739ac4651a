"""PPO's pieces as plain functions: sampling responses, per-token log-probs and values,
generalised advantage estimation, and the clipped policy and value losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from llmtune.config.schema import EvaluateConfig
from llmtune.models.generation import generate


def gae(rewards: Tensor, values: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Advantages and returns [L] of one response from its per-token rewards and values [L].

    delta_t = r_t + gamma V_{t+1} - V_t (V after the last token is 0: the episode ends);
    A_t = delta_t + gamma lam A_{t+1}; the value target is A_t + V_t.
    """
    advantages = torch.zeros_like(rewards)
    running = rewards.new_zeros(())
    for t in reversed(range(rewards.shape[0])):
        next_value = values[t + 1] if t + 1 < rewards.shape[0] else 0.0
        delta = rewards[t] + gamma * next_value - values[t]
        running = delta + gamma * lam * running
        advantages[t] = running
    return advantages, advantages + values


def clipped_policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, clip: float) -> Tensor:
    """[n] PPO surrogate: max(-A r, -A clip(r, 1-eps, 1+eps)) with r = pi / pi_old per token,
    so a step gains nothing from moving the ratio beyond the clip range."""
    ratio = torch.exp(logp - old_logp)
    return torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1 - clip, 1 + clip))


def clipped_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, clip: float) -> Tensor:
    """[n] 0.5 max((V - R)^2, (V_clipped - R)^2), V_clipped kept within clip of the rollout's V."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)


def action_logps(
    model: torch.nn.Module, input_ids: Tensor, actions: Tensor, with_values: bool = False
) -> tuple[Tensor, Tensor | None]:
    """Log-probabilities [n] of the response tokens (`actions` [B,W-1]: position t predicts
    token t+1) in row-major order, and the value head's estimate [n] at the same positions."""
    hidden = model(input_ids)[:, :-1][actions]  # [n,D]: states that chose each response token
    logits = model.heads["lm"](hidden).float()
    logps = -F.cross_entropy(logits, input_ids[:, 1:][actions], reduction="none")
    values = model.heads["value"](hidden).float() if with_values else None
    return logps, values


def sample(
    policy: torch.nn.Module,
    prompts: list[list[int]],
    cfg: EvaluateConfig,
    eos_id: int,
    generator: torch.Generator | None,
) -> list[list[int]]:
    """One sampled response per prompt (batched, KV-cached generation, `cfg.batch_size` rows at
    a time); the training mode is restored."""
    was_training = policy.training
    try:
        return [out.token_ids for out in generate(policy, prompts, cfg, eos_id, generator)]
    finally:
        policy.train(was_training)


def pack(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> dict[str, Tensor]:
    """prompt + response rows right-padded: input_ids, attention_mask [B,W] and the response
    positions in target coordinates, actions [B,W-1] (True where token t+1 is a response token)."""
    width = max(len(p) + len(r) for p, r in zip(prompts, responses))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    actions = torch.zeros(len(prompts), width - 1, dtype=torch.bool)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        mask[i, : len(p) + len(r)] = 1
        actions[i, len(p) - 1 : len(p) + len(r) - 1] = True
    return {"input_ids": ids, "attention_mask": mask, "actions": actions}
