"""T5's span corruption (Raffel et al. 2020, section 3.1.4): drop random spans of a token
sequence, replace each by one sentinel in the input, and ask for the dropped spans as target.

input  = kept_0 <s0> kept_1 <s1> ... kept_{n-1} <s_{n-1}> EOS
target = <s0> dropped_0 <s1> dropped_1 ... <s_{n-1}> dropped_{n-1} EOS

Sentinels count down from the top of the vocabulary, as T5's <extra_id_0> is id V-1: a
tokenizer that appends its sentinels in reverse order (<extra_id_99> first) keeps that
layout, so ids mean the same as in Hugging Face T5 tokenizers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch

from llmtune.errors import ConfigError

NOISE_DENSITY = 0.15
MEAN_SPAN_LENGTH = 3.0
N_SENTINELS = 100


def sentinel_tokens(n: int = N_SENTINELS) -> list[str]:
    """Sentinel token strings in the order a tokenizer should add them: <extra_id_{n-1}>
    first, <extra_id_0> last, so that <extra_id_0> takes the highest id."""
    return [f"<extra_id_{i}>" for i in reversed(range(n))]


def sentinel_ids(vocab_size: int, n: int = N_SENTINELS) -> list[int]:
    """Ids of <extra_id_0>, <extra_id_1>, ... in a vocabulary whose top n ids are sentinels."""
    return [vocab_size - 1 - i for i in range(n)]


def noise_counts(length: int, noise_density: float, mean_span: float) -> tuple[int, int]:
    """(noise tokens, noise spans) T5 uses for `length` tokens: at least one of each, and at
    least one kept token."""
    n_noise = min(max(round(length * noise_density), 1), length - 1)
    return n_noise, max(round(n_noise / mean_span), 1)


def span_corruption_lengths(
    inputs_length: int, noise_density: float = NOISE_DENSITY, mean_span: float = MEAN_SPAN_LENGTH
) -> tuple[int, int]:
    """(raw tokens per example, target length) such that corrupting that many raw tokens
    gives exactly `inputs_length` input tokens (EOS included). T5's own arithmetic
    (random_spans_helper): 512 -> (568, 114) at density 0.15, mean span 3."""

    def lengths(n_tokens: int) -> tuple[int, int]:
        n_noise, n_spans = noise_counts(n_tokens, noise_density, mean_span)
        # each span adds one sentinel to both sides; both end with EOS
        return n_tokens - n_noise + n_spans + 1, n_noise + n_spans + 1

    if inputs_length < 3:
        raise ConfigError(f"span corruption needs inputs of at least 3 tokens, not {inputs_length}")
    n_tokens = inputs_length
    while lengths(n_tokens + 1)[0] <= inputs_length:
        n_tokens += 1
    return n_tokens, lengths(n_tokens)[1]


def _random_partition(total: int, parts: int, generator: torch.Generator) -> torch.Tensor:
    """`parts` positive lengths summing to `total`, uniform over all such compositions."""
    cuts = torch.randperm(total - 1, generator=generator)[: parts - 1].sort().values + 1
    bounds = torch.cat([torch.tensor([0]), cuts, torch.tensor([total])])
    return bounds.diff()


def noise_mask(
    length: int, noise_density: float, mean_span: float, generator: torch.Generator
) -> torch.Tensor:
    """Boolean [length], True on dropped tokens: round(length * density) of them in
    round(noise / mean_span) spans, alternating kept/dropped and starting with kept tokens."""
    if length < 2:
        raise ValueError("span corruption needs at least 2 tokens")
    n_noise, n_spans = noise_counts(length, noise_density, mean_span)
    n_spans = min(n_spans, n_noise, length - n_noise)
    noise = _random_partition(n_noise, n_spans, generator)
    kept = _random_partition(length - n_noise, n_spans, generator)
    lengths = torch.stack([kept, noise], dim=1).flatten()  # kept_0, noise_0, kept_1, ...
    flags = torch.tensor([False, True]).repeat(n_spans)
    return flags.repeat_interleave(lengths)


def _replace_spans(tokens: torch.Tensor, spans: torch.Tensor, sentinels: torch.Tensor):
    """tokens with each run of `spans` (True) replaced by the next sentinel."""
    starts = spans & ~torch.cat([torch.tensor([False]), spans[:-1]])
    span_index = starts.cumsum(0) - 1
    out = torch.where(starts, sentinels[span_index.clamp(min=0)], tokens)
    return out[~spans | starts]


def corrupt_spans(
    tokens: torch.Tensor,
    sentinels: Sequence[int],
    eos_id: int,
    generator: torch.Generator,
    noise_density: float = NOISE_DENSITY,
    mean_span: float = MEAN_SPAN_LENGTH,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) for a 1-D tensor of token ids (no EOS of its own; both get one)."""
    mask = noise_mask(tokens.numel(), noise_density, mean_span, generator)
    n_spans = int((mask & ~torch.cat([torch.tensor([False]), mask[:-1]])).sum())
    if n_spans > len(sentinels):
        raise ConfigError(
            f"span corruption needs {n_spans} sentinel tokens for {tokens.numel()} tokens but "
            f"the tokenizer has {len(sentinels)}; shorten model.max_seq_len or add sentinels"
        )
    ids = torch.tensor(list(sentinels[:n_spans]), dtype=tokens.dtype)
    eos = torch.tensor([eos_id], dtype=tokens.dtype)
    inputs = torch.cat([_replace_spans(tokens, mask, ids), eos])
    # the target names each dropped span by its sentinel: replace the kept runs instead
    targets = torch.cat([_replace_spans(tokens, ~mask, ids), eos])
    return inputs, targets


def stream_chunks(
    documents: Iterable[Sequence[int]], size: int, eos_id: int
) -> Iterator[list[int]]:
    """Concatenate documents, each followed by EOS, and cut the stream into `size`-token
    chunks (the last partial chunk is dropped), as T5 packs its pretraining text."""
    buffer: list[int] = []
    for doc in documents:
        buffer.extend(doc)
        buffer.append(eos_id)
        while len(buffer) >= size:
            yield buffer[:size]
            buffer = buffer[size:]
