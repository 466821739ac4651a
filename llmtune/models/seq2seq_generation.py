"""Generation from an encoder-decoder (T5): greedy, sampled, or beam search, batched.

The encoder runs once per input; the decoder keeps a cache of its self-attention keys/values
and of each block's cross-attention keys/values, so each new token costs one position.
Beam search follows Hugging Face's `generate` defaults (length_penalty 1.0, early_stopping
false), so the same model gives the same beams.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from llmtune.config.schema import EvaluateConfig
from llmtune.errors import ConfigError
from llmtune.models.generation import Generation, next_token, row_generators
from llmtune.models.t5 import DECODER_START_ID, DecoderCache, Memory


class _Decoder:
    """The model's decoder over one encoded batch: next-token logits per step."""

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


def _sample(
    dec: _Decoder, cfg: EvaluateConfig, eos_id: int, generators: list[torch.Generator]
) -> list[list[int]]:
    """Greedy or sampled decoding (row i draws from generators[i]); a row stops at its EOS."""
    batch, device = len(generators), dec.memory.states.device
    tokens = torch.full((batch, 1), DECODER_START_ID, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    for _ in range(cfg.max_new_tokens):
        nxt = next_token(dec.logits(tokens), cfg, generators)
        # rows already finished keep emitting EOS; their tokens are cut at the first one
        nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        done |= (nxt == eos_id) & cfg.stop_at_eos
        if bool(done.all()):
            break
    return [row[1:].tolist() for row in tokens]


def _finish(ids: list[int], eos_id: int, cfg: EvaluateConfig, source_tokens: int) -> Generation:
    """Cut after the first EOS (kept, as the decoder generator keeps it); say why it stopped."""
    if cfg.stop_at_eos and eos_id in ids:
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


def _beam_step(dec: _Decoder, st: _Beams, eos_id: int, step: int, cfg: EvaluateConfig) -> bool:
    """One step: extend every beam by every token, keep the 2K best, retire the ended ones,
    continue with the K best that did not end. Returns whether the search is over."""
    b, k, _ = st.tokens.shape
    logp = torch.log_softmax(dec.logits(st.tokens.view(b * k, -1)), dim=-1)  # [B*K,V]
    v = logp.shape[-1]
    total = (logp.view(b, k, v) + st.scores[..., None]).view(b, k * v)
    top_scores, top_index = total.topk(min(2 * k, k * v), dim=-1)  # K survivors even if K end
    beam, token = top_index // v, top_index % v
    ended = ((token == eos_id) & cfg.stop_at_eos) | (step + 1 == cfg.max_new_tokens)
    _collect_finished(st, (top_scores, beam, token), ended, step + 1, cfg.length_penalty)
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
        best_possible = float(st.scores[i, 0]) / (step + 1) ** cfg.length_penalty
        full = len(st.finished[i]) == k
        st.done[i] = st.done[i] or (full and best_possible <= st.finished[i][-1][0])
    return all(st.done) or bool(ended.all())


def _beam_search(dec: _Decoder, batch: int, eos_id: int, cfg: EvaluateConfig) -> list[list[int]]:
    """The best finished hypothesis of each input."""
    k, device = cfg.num_beams, dec.memory.states.device
    tokens = torch.full((batch, k, 1), DECODER_START_ID, dtype=torch.long, device=device)
    scores = torch.zeros(batch, k, device=device)
    scores[:, 1:] = -1e9  # all beams start identical: only the first may expand at step 0
    st = _Beams(tokens, scores, [[] for _ in range(batch)], [False] * batch)
    for step in range(cfg.max_new_tokens):
        if _beam_step(dec, st, eos_id, step, cfg):
            break
    return [hyps[0][1] for hyps in st.finished]


def check_decoding(cfg: EvaluateConfig) -> None:
    """evaluate.num_beams and sampling settings that cannot go together."""
    if cfg.num_beams < 1:
        raise ConfigError(f"evaluate.num_beams={cfg.num_beams}: must be >= 1")
    if cfg.num_beams > 1 and cfg.temperature != 0:
        raise ConfigError(
            "evaluate.num_beams > 1 is beam search, which is deterministic: "
            "set evaluate.temperature=0 (or num_beams=1 to sample)"
        )


def _encoded_batch(
    model: torch.nn.Module, rows: list[list[int]], beams: int
) -> tuple[Memory, Tensor]:
    """The encoder's Memory of right-padded rows (each repeated per beam), and their lengths."""
    device = next(model.parameters()).device
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    memory = model.backbone.encode(ids.to(device), mask.to(device))
    if beams > 1:  # each beam carries its own copy of the encoder output rows
        memory = Memory(
            memory.states.repeat_interleave(beams, 0), memory.mask.repeat_interleave(beams, 0)
        )
    return memory, mask.sum(1)


@torch.inference_mode()
def generate_seq2seq(
    model: torch.nn.Module,
    sources: Sequence[Sequence[int]],
    cfg: EvaluateConfig,
    eos_id: int,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> list[Generation]:
    """One Generation per source (token ids, as the encoder reads them), in source order:
    `cfg.batch_size` sources at a time, decoding from T5's start token; greedy, sampled
    (each row with its own seeded generator, so a sample does not depend on its batch) or
    beam search (`cfg.num_beams`). Without `use_cache` each step re-reads the whole target."""
    check_decoding(cfg)
    if cfg.max_new_tokens <= 0:
        return [Generation([], "max_new_tokens", len(s)) for s in sources]
    model.eval()
    rows = [list(s)[: model.config.max_seq_len] or [eos_id] for s in sources]
    generators = row_generators(len(rows), generator)
    out: list[Generation] = []
    size = max(1, cfg.batch_size)
    for start in range(0, len(rows), size):
        batch = rows[start : start + size]
        memory, lengths = _encoded_batch(model, batch, cfg.num_beams)
        dec = _Decoder(model, memory, use_cache)
        if cfg.num_beams > 1:
            ids = _beam_search(dec, len(batch), eos_id, cfg)
        else:
            ids = _sample(dec, cfg, eos_id, generators[start : start + size])
        out += [_finish(r, eos_id, cfg, int(n)) for r, n in zip(ids, lengths)]
    return out
