"""Log-likelihood scoring with a causal LM: perplexity over documents and summed scores of
chosen continuations (zero/few-shot label words). Logits are computed only where scored."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def lm_windows(documents: Sequence[Sequence[int]], eos_id: int, seq_len: int) -> list[list[int]]:
    """Each document as [EOS] + tokens + [EOS], cut into windows of at most seq_len tokens.

    The leading EOS is the context of the first token (GPT-2's convention: training packs
    documents after an EOS), the trailing one scores the end of the document. Consecutive
    windows share one token, so every target is predicted exactly once, from the context
    inside its window.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2 to predict anything, got {seq_len}")
    windows = []
    for doc in documents:
        seq = [eos_id, *doc, eos_id]
        for start in range(0, len(seq) - 1, seq_len - 1):
            windows.append(seq[start : start + seq_len])
    return windows


def pad_batch(
    sequences: Sequence[Sequence[int]], n_scored: Sequence[int], pad_id: int
) -> tuple[Tensor, Tensor]:
    """Right-padded input ids [B,T] and next-token targets [B,T-1] where only the last
    n_scored[i] tokens of row i are targets (-100 elsewhere). Right padding is safe: a
    causal model never looks ahead."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    targets = torch.full((len(sequences), width - 1), -100, dtype=torch.long)
    for row, (seq, n) in enumerate(zip(sequences, n_scored)):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        if n:
            targets[row, len(seq) - 1 - n : len(seq) - 1] = ids[row, len(seq) - n : len(seq)]
    return ids, targets


@torch.no_grad()
def target_logprobs(model: torch.nn.Module, ids: Tensor, targets: Tensor) -> Tensor:
    """Summed log p(target) per row [B] for targets [B,T-1] (-100 = not scored)."""
    device = next(model.parameters()).device
    ids, targets = ids.to(device), targets.to(device)
    hidden = model(ids)[:, :-1]  # [B,T-1,D]: position t predicts token t+1
    scored = targets != -100  # [B,T-1]
    # the vocabulary projection is the big matmul: run it on scored positions only
    logits = model.heads["lm"](hidden[scored]).float()  # [N,V]
    picked = logits.log_softmax(-1).gather(-1, targets[scored].unsqueeze(-1)).squeeze(-1)  # [N]
    rows = scored.nonzero()[:, 0]
    return torch.zeros(ids.shape[0], device=device).index_add_(0, rows, picked).cpu()


def score_sequences(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    n_scored: Sequence[int],
    pad_id: int,
    batch_size: int,
) -> list[float]:
    """Summed log-likelihood of the last n_scored[i] tokens of each sequence."""
    scores: list[float] = []
    for start in range(0, len(sequences), batch_size):
        ids, targets = pad_batch(
            sequences[start : start + batch_size], n_scored[start : start + batch_size], pad_id
        )
        scores.extend(target_logprobs(model, ids, targets).tolist())
    return scores


def perplexity(
    model: torch.nn.Module, documents: Sequence[Sequence[int]], eos_id: int, batch_size: int
) -> dict[str, float]:
    """Token-weighted mean negative log-likelihood over every next-token target, and exp of it."""
    windows = lm_windows(documents, eos_id, model.config.max_seq_len)
    n_scored = [len(w) - 1 for w in windows]
    total = -sum(score_sequences(model, windows, n_scored, eos_id, batch_size))
    n_tokens = sum(n_scored)
    loss = total / max(n_tokens, 1)
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),  # exp(50) already means "no model at all"
        "n_tokens": n_tokens,
        "n_examples": len(documents),
    }
