"""Labelled decoder rows packed several to a row of model.max_seq_len (data.packing=true):
best-fit by decreasing length, with per-token document ids so attention and positions stay
inside each example, and no target that crosses from one example into the next."""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass

from llmtune.data.labelled import IGNORE, Encoded


@dataclass(frozen=True)
class PackingStats:
    """Rows and padding of one split before and after packing (padding: the share of
    positions left empty when every row is model.max_seq_len long)."""

    examples: int
    rows: int
    tokens: int
    seq_len: int

    @property
    def padding_before(self) -> float:
        return 1 - self.tokens / max(1, self.examples * self.seq_len)

    @property
    def padding_after(self) -> float:
        return 1 - self.tokens / max(1, self.rows * self.seq_len)

    def describe(self, key: str) -> str:
        return (
            f"data.{key}: packed {self.examples:,} examples into {self.rows:,} rows of "
            f"{self.seq_len} tokens (data.packing=true); padding of {self.seq_len}-token rows "
            f"{self.padding_before:.1%} -> {self.padding_after:.1%}"
        )


def pack_order(lengths: list[int], seq_len: int, seed: int) -> list[list[int]]:
    """Example indices grouped into rows of at most seq_len tokens: longest first, each into
    the fullest row it still fits (best fit), ties in an order shuffled by `seed`."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    order.sort(key=lambda i: -lengths[i])  # stable: equal lengths keep the seeded order
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (space left, row), sorted: best fit by bisection
    for i in order:
        n = lengths[i]
        if n > seq_len:
            raise ValueError(f"example {i} has {n} tokens, more than seq_len={seq_len}")
        at = bisect.bisect_left(free, (n, -1))
        if at == len(free):
            rows.append([i])
            space, row = seq_len - n, len(rows) - 1
        else:
            space, row = free.pop(at)
            rows[row].append(i)
            space -= n
        if space > 0:
            bisect.insort(free, (space, row))
    return rows


def pack_encoded(encoded: Encoded, seq_len: int, seed: int) -> tuple[Encoded, PackingStats]:
    """`encoded` (input_ids and per-token labels, each at most seq_len long) packed into rows
    with "doc_ids" (0, 1, ... per example in the row). Each example's first token is never a
    target, so the last token of one example does not learn to predict the next example."""
    ids, labels = encoded.rows["input_ids"], encoded.rows["labels"]
    groups = pack_order([len(r) for r in ids], seq_len, seed)
    out: dict[str, list] = {"input_ids": [], "labels": [], "doc_ids": []}
    for group in groups:
        row_ids, row_labels, row_docs = [], [], []
        for doc, i in enumerate(group):
            row_ids += ids[i]
            # position 0 is never a target unpacked (targets are labels[1:]): keep it so
            row_labels += [IGNORE, *labels[i][1:]]
            row_docs += [doc] * len(ids[i])
        out["input_ids"].append(row_ids)
        out["labels"].append(row_labels)
        out["doc_ids"].append(row_docs)
    stats = PackingStats(len(ids), len(groups), sum(len(r) for r in ids), seq_len)
    return Encoded(out, encoded.overlong, encoded.n_dropped), stats
