"""Text generation from a decoder (its `lm` head): prompts completed `evaluate.batch_size` at a time
(left-padded, with a key/value cache), greedy or sampled (temperature, top-k, top-p), each row
stopping on its own and leaving the batch when it does."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from llmtune.config.schema import EvaluateConfig
from llmtune.errors import ConfigError
from llmtune.models.blocks import KV, GrowingKV
from llmtune.models.family import Kind

OnToken = Callable[[int, int], None]  # (prompt index, new token id)
# The largest seed a row generator gets (torch.Generator.manual_seed takes 64 bits).
_SEED_RANGE = 2**62
# Told each new token as it is chosen: (prompt index, token id). `llmtune serve` streams with it.
OnToken = Callable[[int, int], None]


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


def row_generators(n: int, generator: torch.Generator | None) -> list[torch.Generator]:
    """One generator per prompt, seeded from `generator` in prompt order: a prompt's sample
    then depends neither on the batch it shares nor on when its neighbours finish."""
    seeds = torch.randint(_SEED_RANGE, (n,), generator=generator).tolist()
    return [torch.Generator().manual_seed(s) for s in seeds]


def next_token(
    logits: Tensor, cfg: EvaluateConfig, generators: Sequence[torch.Generator]
) -> Tensor:
    """Choose the next token [B] from logits [B,V]: argmax at temperature 0, else sample row i
    with `generators[i]` (one uniform draw per row, inverted through the row's CDF)."""
    if cfg.temperature == 0:
        return logits.argmax(-1)
    filtered = filter_logits(logits.float() / cfg.temperature, cfg.top_k, cfg.top_p)
    probs = filtered.softmax(-1).double()  # fp64: the CDF of 50k tokens keeps its tail
    cdf = probs.cumsum(-1)
    draws = [torch.rand(1, generator=g, dtype=torch.float64) for g in generators]
    u = torch.cat(draws).to(probs.device)  # CPU generators: the draws are the same on any device
    # first token whose CDF exceeds u x total; a token of probability 0 never does
    chosen = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
    # rounding can put u x total at the very top: that is the last possible token
    last = (probs > 0).cumsum(-1).argmax(-1)
    return torch.minimum(chosen, last)


@torch.inference_mode()
def generate(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    cfg: EvaluateConfig,
    eos_id: int | None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    on_token: OnToken | None = None,
) -> list[Generation]:
    """Complete every prompt (token ids); one Generation per prompt, in prompt order.
    `on_token(prompt index, token id)` sees each new token as it is chosen (streaming).

    Prompts of similar length share a batch of `cfg.batch_size` rows (less padding). Each
    row's tokens equal what the prompt alone would give (same seed for sampling). The model
    is any decoder whose backbone follows the generation contract of
    `GPTBackbone.forward` (past, use_cache, attention_mask) and has an `lm` head. Without
    `use_cache` every step re-reads the whole sequence (the reference for the cached path).
    """
    if model.kind == Kind.ENCODER_DECODER:  # the prompt is the encoder's source, + EOS as trained
        from llmtune.models.seq2seq_generation import generate_seq2seq  # it imports this module

        sources = [list(p) if list(p[-1:]) == [eos_id] else [*p, eos_id] for p in prompts]
        return generate_seq2seq(model, sources, cfg, eos_id, generator, use_cache)
    if cfg.num_beams > 1:
        raise ConfigError(
            f"evaluate.num_beams={cfg.num_beams}: beam search is for encoder-decoder models "
            "(model.family=t5); set evaluate.num_beams=1 for a decoder"
        )
    model.eval()
    # positions past max_seq_len were never trained, so the context stops there; an over-long
    # prompt keeps its end: the next token depends most on what is nearest
    limit = model.config.max_seq_len
    empty = [eos_id if eos_id is not None else 0]
    rows = [list(p[-limit:]) if len(p) else empty for p in prompts]
    generators = row_generators(len(rows), generator)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    size = max(1, cfg.batch_size)
    done: dict[int, Generation] = {}
    for start in range(0, len(order), size):
        batch = order[start : start + size]
        heard = None if on_token is None else _relay(on_token, batch)
        row_gens = [generators[i] for i in batch]
        outs = _complete(model, [rows[i] for i in batch], cfg, eos_id, row_gens, use_cache, heard)
        done.update(zip(batch, outs))
    return [done[i] for i in range(len(rows))]


def _relay(on_token: OnToken, batch: list[int]) -> OnToken:
    """`on_token` told prompt indices instead of the batch's row indices."""
    return lambda row, token: on_token(batch[row], token)


def _left_padded(rows: list[list[int]], device: torch.device) -> tuple[Tensor, Tensor | None]:
    """Token ids [B,W] with each row's padding on the left, and the [B,W] mask of real tokens
    (None when no row is padded: the backbone's unmasked causal path is then taken)."""
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)  # pad id 0: masked, never attended
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
    if all(len(r) == width for r in rows):
        return ids.to(device), None
    lengths = torch.tensor([len(r) for r in rows])
    mask = torch.arange(width) >= (width - lengths)[:, None]
    return ids.to(device), mask.to(device)


def _growing(
    past: list[KV | GrowingKV], rows: list[list[int]], cfg: EvaluateConfig, limit: int
) -> list[GrowingKV]:
    """The prompt's cache as GrowingKV buffers, with room for every position still to come:
    at most max_new_tokens, and no row goes past max_seq_len (+1 for the final token)."""
    steps = min(cfg.max_new_tokens, limit + 1 - min(len(r) for r in rows))
    return [GrowingKV(layer, layer[0].shape[2] + steps) for layer in past]


def _select(layer: KV | GrowingKV, rows: Tensor) -> KV | GrowingKV:
    """The cache of the given batch rows only."""
    if isinstance(layer, GrowingKV):
        return layer.select(rows)
    return layer[0].index_select(0, rows), layer[1].index_select(0, rows)


def _stopped(
    new: list[int], prompt_len: int, cfg: EvaluateConfig, eos_id: int | None, limit: int
) -> str | None:
    """Why a row stops after its newest token, or None while it goes on."""
    if cfg.stop_at_eos and eos_id is not None and new[-1] == eos_id:
        return "eos"
    if len(new) >= cfg.max_new_tokens:
        return "max_new_tokens"
    if prompt_len + len(new) > limit:  # the next input would sit past max_seq_len
        return "context"
    return None


def _complete(
    model: torch.nn.Module,
    rows: list[list[int]],
    cfg: EvaluateConfig,
    eos_id: int | None,
    generators: list[torch.Generator],
    use_cache: bool,
    on_token: OnToken | None,
) -> list[Generation]:
    """Complete one batch of prompts. Finished rows leave the batch and the cache, so they
    stop costing compute."""
    limit = model.config.max_seq_len
    new: list[list[int]] = [[] for _ in rows]
    reasons = ["max_new_tokens"] * len(rows)
    if cfg.max_new_tokens <= 0:
        return [Generation([], r, len(p)) for r, p in zip(reasons, rows)]
    ids, mask = _left_padded(rows, next(model.parameters()).device)
    active = list(range(len(rows)))  # the prompt of each batch row
    step_input, past = ids, None
    while True:
        if use_cache:
            first = past is None
            hidden, past = model(step_input, past=past, use_cache=True, attention_mask=mask)
            if first:  # from here on each step writes one position into preallocated buffers
                past = _growing(past, rows, cfg, limit)
        else:
            hidden = model(ids, attention_mask=mask)
        logits = model.heads["lm"](hidden[:, -1])  # [A,V]: only the last position matters
        tokens = next_token(logits, cfg, [generators[i] for i in active])  # [A]
        keep = []
        for j, (i, token) in enumerate(zip(active, tokens.tolist())):
            new[i].append(token)
            if on_token is not None:
                on_token(i, token)
            reason = _stopped(new[i], len(rows[i]), cfg, eos_id, limit)
            if reason is None:
                keep.append(j)
            else:
                reasons[i] = reason
        if not keep:
            break
        if len(keep) < len(active):
            index = torch.tensor(keep, device=ids.device)
            tokens, ids = tokens[index], ids[index]
            mask = None if mask is None else mask[index]
            if past is not None:
                past = [_select(layer, index) for layer in past]
            active = [active[j] for j in keep]
        step_input = tokens.view(-1, 1)
        if not use_cache:
            ids = torch.cat([ids, step_input], dim=1)
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=1)
    return [Generation(n, r, len(p)) for n, r, p in zip(new, reasons, rows)]
