"""GPT packing, read from a token store: documents joined by EOS and cut into fixed-length
windows, with per-token document ids so attention never crosses a document boundary."""

from __future__ import annotations

import numpy as np
import torch

from llmtune.data.store import TokenStore
from llmtune.errors import DataError

Batch = dict[str, torch.Tensor]


class PackedWindows:
    """Window i is tokens [i*L, (i+1)*L) of the stream doc 0, EOS, doc 1, EOS, ...; the ragged
    tail is dropped. Rows are read from the store on demand, so memory holds only the
    document index (8 bytes per document), never the corpus.

    "input_ids" int64 [B, L]; "doc_ids" int32 [B, L]: the document each token belongs to,
    counted from 0 in every window; an EOS belongs to the document it ends.
    """

    def __init__(self, store: TokenStore, seq_len: int, eos_id: int) -> None:
        self.store, self.seq_len, self.eos_id = store, seq_len, eos_id
        starts = store.doc_starts()
        # where document d starts in the EOS-joined stream: its tokens plus one EOS per earlier doc
        self.stream_starts = starts[:-1] + np.arange(store.n_docs, dtype=np.int64)
        self.n_rows = (store.n_tokens + store.n_docs) // seq_len
        if self.n_rows == 0:
            raise DataError(
                f"data: the split has {store.n_tokens + store.n_docs} tokens (with EOS), fewer "
                f"than one block of model.max_seq_len={seq_len}; add documents or lower "
                "model.max_seq_len"
            )

    def __len__(self) -> int:
        return self.n_rows

    def rows(self, index: torch.Tensor, epoch: int = 0) -> Batch:
        """The windows numbered `index` (the same whatever the epoch)."""
        ids = np.empty((len(index), self.seq_len), dtype=np.int64)
        docs = np.empty((len(index), self.seq_len), dtype=np.int32)
        for row, i in enumerate(index.tolist()):
            ids[row], docs[row] = self.window(int(i))
        return {"input_ids": torch.from_numpy(ids), "doc_ids": torch.from_numpy(docs)}

    def window(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        start, end = i * self.seq_len, (i + 1) * self.seq_len
        ss, store = self.stream_starts, self.store
        first = int(np.searchsorted(ss, start, side="right")) - 1
        last = int(np.searchsorted(ss, end - 1, side="right")) - 1
        starts = store.doc_starts()
        lengths = starts[first + 1 : last + 2] - starts[first : last + 1]
        # each document's EOS in stream coordinates; those inside the window are written in
        eos = ss[first : last + 1] + lengths
        is_eos = np.zeros(self.seq_len, dtype=bool)
        inside = eos[(eos >= start) & (eos < end)] - start
        is_eos[inside] = True
        # the tokens: from the window's start (clipped to its first document's end) onward
        tok_start = int(starts[first]) + min(start - int(ss[first]), int(lengths[0]))
        tokens = store.tokens(tok_start, tok_start + self.seq_len - len(inside))
        out = np.full(self.seq_len, self.eos_id, dtype=np.int64)
        out[~is_eos] = tokens
        # a token's document: how many EOS come before it in the window
        doc_ids = np.concatenate([[0], np.cumsum(is_eos[:-1])]).astype(np.int32)
        return out, doc_ids


def pack_documents(store: TokenStore, seq_len: int, eos_id: int) -> PackedWindows:
    """The causal-LM examples of a split: its packed windows (see PackedWindows)."""
    return PackedWindows(store, seq_len, eos_id)
