"""BERT inputs built on the fly from a token store's document index: "[CLS] A [SEP] B [SEP]"
pairs with next-sentence labels, padded to seq_len.

Segments are spans of tokens (no sentence splitter): each document is cut into chunks of
seq_len - 3 tokens, and pair k is chunk k cut at a random point into A and B; with
probability nsp_prob, B is replaced by a span of a random other document. The draws of a
pair are seeded by (seed, epoch, k), so any pair can be built alone, by any process.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from llmtune.data.store import TokenStore
from llmtune.data.tokenizer import TokenizerInfo
from llmtune.errors import DataError

IS_NEXT, NOT_NEXT = 0, 1  # Hugging Face convention for next_sentence_label
Batch = dict[str, torch.Tensor]


class PairWindows:
    """Pair k of epoch e: see the module docstring. Memory holds the document index and
    each document's first chunk number (8 bytes per document each), never the corpus.

    Rows: "input_ids", "token_type_ids" (0 for [CLS] A [SEP], 1 for B [SEP], 0 on padding),
    "attention_mask" (1 real, 0 padding), each int64 [B, L], and with NSP "nsp_labels" [B]
    (0 = B follows A, 1 = B is from another document).
    """

    def __init__(
        self, store: TokenStore, seq_len: int, info: TokenizerInfo, nsp_prob: float, seed: int
    ) -> None:
        if seq_len < 5:
            raise DataError(f"model.max_seq_len={seq_len}: BERT pairs need at least 5 positions")
        if info.cls_id is None or info.sep_id is None:
            raise DataError("tokenizer: a BERT model needs [CLS] and [SEP] tokens")
        self.store, self.seq_len, self.info = store, seq_len, info
        self.nsp_prob, self.seed = nsp_prob, seed
        self.chunk = seq_len - 3
        self.starts = store.doc_starts()
        lengths = np.diff(self.starts)
        # chunks of each document that hold the 2 tokens a pair needs
        per_doc = lengths // self.chunk + (lengths % self.chunk >= 2)
        self.first_chunk = np.concatenate([[0], np.cumsum(per_doc)])
        self.donors = np.flatnonzero(lengths > 0)  # documents a random B can come from
        if self.first_chunk[-1] == 0:
            raise DataError(
                "data: no document has the 2 tokens a BERT pair needs; add longer documents"
            )

    def __len__(self) -> int:
        return int(self.first_chunk[-1])

    def rows(self, index: torch.Tensor, epoch: int = 0) -> Batch:
        n, pad = len(index), self.info.pad_id
        ids = np.full((n, self.seq_len), pad, dtype=np.int64)
        types = np.zeros((n, self.seq_len), dtype=np.int64)
        mask = np.zeros((n, self.seq_len), dtype=np.int64)
        labels = np.zeros(n, dtype=np.int64)
        for row, k in enumerate(index.tolist()):
            a, b, labels[row] = self.pair(int(k), epoch)
            sep1, sep2 = 1 + len(a), 2 + len(a) + len(b)
            ids[row, 0] = self.info.cls_id
            ids[row, 1:sep1] = a
            ids[row, sep1] = ids[row, sep2] = self.info.sep_id
            ids[row, sep1 + 1 : sep2] = b
            types[row, sep1 + 1 : sep2 + 1] = 1
            mask[row, : sep2 + 1] = 1
        out = {
            "input_ids": torch.from_numpy(ids),
            "token_type_ids": torch.from_numpy(types),
            "attention_mask": torch.from_numpy(mask),
        }
        if self.nsp_prob > 0:
            out["nsp_labels"] = torch.from_numpy(labels)
        return out

    def pair(self, k: int, epoch: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(A tokens, B tokens, label) of pair k in `epoch`."""
        rng = random.Random((self.seed * 1_000_003 + epoch) * 2_147_483_647 + k)
        doc = int(np.searchsorted(self.first_chunk, k, side="right")) - 1
        begin = int(self.starts[doc]) + (k - int(self.first_chunk[doc])) * self.chunk
        size = min(self.chunk, int(self.starts[doc + 1]) - begin)
        tokens = self.store.tokens(begin, begin + size)
        split = rng.randint(1, size - 1)  # A and B each get at least one token
        if len(self.donors) > 1 and rng.random() < self.nsp_prob:
            return tokens[:split], self._random_span(doc, size - split, rng), NOT_NEXT
        return tokens[:split], tokens[split:], IS_NEXT

    def _random_span(self, doc: int, want: int, rng: random.Random) -> np.ndarray:
        """Up to `want` tokens from a random document other than `doc`."""
        # `doc` is a donor and donors are sorted: shifting draws at or past it by one picks
        # uniformly among the others
        j = rng.randrange(len(self.donors) - 1)
        other = int(self.donors[j + 1] if self.donors[j] >= doc else self.donors[j])
        begin, end = int(self.starts[other]), int(self.starts[other + 1])
        offset = rng.randint(0, max(0, end - begin - want))
        return self.store.tokens(begin + offset, min(end, begin + offset + want))


def build_pairs(
    store: TokenStore, seq_len: int, info: TokenizerInfo, nsp_prob: float, seed: int
) -> PairWindows:
    """The masked-LM examples of a split: its sentence pairs (see PairWindows); with
    nsp_prob=0 every B is the true continuation and no NSP labels are returned."""
    return PairWindows(store, seq_len, info, nsp_prob, seed)
