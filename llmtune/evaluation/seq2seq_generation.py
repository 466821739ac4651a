"""Generation from an encoder-decoder (T5): greedy, sampled, or beam search, batched.

The encoder runs once per input; the decoder keeps a cache of its self-attention keys/values
and of each block's cross-attention keys/values, so each new token costs one position.
Beam search follows Hugging Face's `generate` defaults (length_penalty 1.0, early_stopping
false), so the same model gives the same beams.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from llmtune.errors import ConfigError
from llmtune.evaluation.generation import Generation, filter_logits
from llmtune.models.t5 import DecoderCache, Memory


@dataclass(frozen=True)
class DecodeSettings:
    """How to pick tokens. temperature 0 = greedy; num_beams > 1 = beam search (greedy only)."""

    max_new_tokens: int = 50
    num_beams: int = 1
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    length_penalty: float = 1.0  # beam scores are sum log p / length**length_penalty
    use_cache: bool = True  # False recomputes the decoder each step (the cache's reference)


class _Decoder:
    """The model's decoder over one encoded batch: next-token log-probs or logits per step."""

    def __init__(self, model: torch.nn.Module, memory: Memory, cached: bool):
        self.backbone, self.head = model.backbone, model.heads["lm"]
        self.memory, self.cached = memory, cached
        self.cache: DecoderCache = self.backbone.start_cache(memory)

    def logits(self, tokens: Tensor) -> Tensor:
        """tokens [N,T] (the start token and everything chosen so far) -> logits [N,V] of the
        next token, in fp32."""
        if self.cached:
            hidden = self.backbone.decode(tokens[:, -1:], self.cache)
        else:
            fresh = self.backbone.start_cache(self.memory)
            hidden = self.backbone.decode(tokens, fresh)
        return self.head(hidden[:, -1]).float()

    def reorder(self, rows: Tensor) -> None:
        if self.cached:
            self.cache.reorder(rows)


def _choose(logits: Tensor, s: DecodeSettings, generator: torch.Generator | None) -> Tensor:
    """Next token [N] from logits [N,V]: argmax at temperature 0, else a filtered sample."""
    if s.temperature == 0:
        return logits.argmax(-1)
    probs = filter_logits(logits / s.temperature, s.top_k, s.top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _sample(
    dec: _Decoder,
    batch: int,
    ids: tuple[int, int],
    s: DecodeSettings,
    gen: torch.Generator | None,
) -> list[list[int]]:
    """Greedy or sampled decoding of `batch` rows; a row stops at its EOS."""
    start_id, eos_id = ids
    device = dec.memory.states.device
    tokens = torch.full((batch, 1), start_id, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    for _ in range(s.max_new_tokens):
        nxt = _choose(dec.logits(tokens), s, gen)
        # rows already finished keep emitting EOS; their tokens are cut at the first one
        nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        done |= nxt == eos_id
        if bool(done.all()):
            break
    return [row[1:].tolist() for row in tokens]


def _finish(ids: list[int], eos_id: int, source_tokens: int) -> Generation:
    """Cut after the first EOS (kept, as the GPT generator keeps it) and say why it stopped."""
    if eos_id in ids:
        return Generation(ids[: ids.index(eos_id) + 1], "eos", source_tokens)
    return Generation(ids, "max_new_tokens", source_tokens)


@dataclass
class _Beams:
    """Beam search state for B inputs x K beams."""

    tokens: Tensor  # [B,K,T] running hypotheses, start token first
    scores: Tensor  # [B,K] summed log-probabilities
    finished: list[list[tuple[float, list[int]]]]  # per input: (normalised score, ids), best first
    done: list[bool]  # per input: no running beam can beat its finished ones any more


def _collect_finished(
    st: _Beams, top: tuple[Tensor, Tensor, Tensor], ended: Tensor, length: int, lp: float
) -> None:
    """Hypotheses ending at this step, among the K best candidates, join the finished lists
    (best K kept) with score / length**length_penalty, length counting the EOS."""
    scores, beam, token = top
    k = st.scores.shape[1]
    for b in range(len(st.done)):
        if st.done[b]:
            continue
        for r in torch.nonzero(ended[b, :k]).flatten().tolist():
            ids = st.tokens[b, beam[b, r], 1:].tolist() + [int(token[b, r])]
            st.finished[b].append((float(scores[b, r]) / length**lp, ids))
        st.finished[b] = sorted(st.finished[b], key=lambda h: -h[0])[:k]


def _beam_step(dec: _Decoder, st: _Beams, eos_id: int, step: int, s: DecodeSettings) -> bool:
    """One step: extend every beam by every token, keep the 2K best, retire the ended ones,
    continue with the K best that did not end. Returns whether the search is over."""
    b, k, _ = st.tokens.shape
    logp = torch.log_softmax(dec.logits(st.tokens.view(b * k, -1)), dim=-1)  # [B*K,V]
    v = logp.shape[-1]
    total = (logp.view(b, k, v) + st.scores[..., None]).view(b, k * v)
    top_scores, top_index = total.topk(2 * k, dim=-1)  # 2K: K survivors even if K end on EOS
    beam, token = top_index // v, top_index % v
    ended = (token == eos_id) | (step + 1 == s.max_new_tokens)
    _collect_finished(st, (top_scores, beam, token), ended, step + 1, s.length_penalty)
    keep = (top_scores - 1e9 * ended.float()).topk(k, dim=-1).indices  # [B,K] into the 2K
    from_beam = beam.gather(1, keep)
    st.scores = top_scores.gather(1, keep) - 1e9 * ended.gather(1, keep).float()
    st.tokens = torch.cat(
        [
            st.tokens.gather(1, from_beam[..., None].expand_as(st.tokens)),
            token.gather(1, keep)[..., None],
        ],
        dim=2,
    )
    dec.reorder((torch.arange(b, device=keep.device)[:, None] * k + from_beam).flatten())
    for i in range(b):
        # the best running beam, were it to end now, against the worst finished one
        best_possible = float(st.scores[i, 0]) / (step + 1) ** s.length_penalty
        full = len(st.finished[i]) == k
        st.done[i] = st.done[i] or (full and best_possible <= st.finished[i][-1][0])
    return all(st.done) or bool(ended.all())


def _beam_search(
    dec: _Decoder, batch: int, ids: tuple[int, int], s: DecodeSettings
) -> list[list[int]]:
    """The best finished hypothesis of each input."""
    (start_id, eos_id), k = ids, s.num_beams
    tokens = torch.full((batch, k, 1), start_id, dtype=torch.long, device=dec.memory.states.device)
    scores = torch.zeros(batch, k, device=dec.memory.states.device)
    scores[:, 1:] = -1e9  # all beams start identical: only the first may expand at step 0
    st = _Beams(tokens, scores, [[] for _ in range(batch)], [False] * batch)
    for step in range(s.max_new_tokens):
        if _beam_step(dec, st, eos_id, step, s):
            break
    return [hyps[0][1] for hyps in st.finished]


@torch.no_grad()
def generate_seq2seq(
    model: torch.nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    settings: DecodeSettings,
    start_id: int,
    eos_id: int,
    generator: torch.Generator | None = None,
) -> list[Generation]:
    """Complete each input row. input_ids [B,S] right-padded, attention_mask [B,S] (1 = token);
    decoding starts from `start_id` (T5: the pad id) and a row stops at `eos_id`.
    Returns one Generation per row: the new ids (with the EOS when reached)."""
    if settings.num_beams > 1 and settings.temperature != 0:
        raise ConfigError("beam search is deterministic: set temperature=0 with num_beams > 1")
    if settings.num_beams < 1 or settings.max_new_tokens < 1:
        raise ConfigError("num_beams and max_new_tokens must be >= 1")
    model.eval()
    memory = model.backbone.encode(input_ids, attention_mask)
    batch, k = input_ids.shape[0], settings.num_beams
    if k > 1:  # each beam carries its own copy of the encoder output rows
        mask = None if memory.mask is None else memory.mask.repeat_interleave(k, dim=0)
        memory = Memory(memory.states.repeat_interleave(k, dim=0), mask)
    dec = _Decoder(model, memory, settings.use_cache)
    ids = (start_id, eos_id)
    if k > 1:
        rows = _beam_search(dec, batch, ids, settings)
    else:
        rows = _sample(dec, batch, ids, settings, generator)
    lengths = [input_ids.shape[1]] * batch if attention_mask is None else attention_mask.sum(1)
    return [_finish(row, eos_id, int(n)) for row, n in zip(rows, lengths)]
