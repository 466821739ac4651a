"""BERT inputs: "[CLS] A [SEP] B [SEP]" pairs with next-sentence labels, padded to seq_len.

Segments are spans of tokens (no sentence splitter): each document is walked in chunks of
up to seq_len - 3 tokens and every chunk is cut at a random point into A and B.
"""

from __future__ import annotations

import random

import datasets
import numpy as np
import torch

from llmtune.data.packing import flat_token_ids
from llmtune.data.tokenizer import TokenizerInfo
from llmtune.errors import DataError

IS_NEXT, NOT_NEXT = 0, 1  # Hugging Face convention for next_sentence_label


def build_pairs(
    token_ids_dataset: datasets.Dataset,
    seq_len: int,
    info: TokenizerInfo,
    nsp_prob: float,
    seed: int,
) -> dict[str, torch.Tensor]:
    """Sentence pairs for MLM (+NSP); all outputs int64.

    Returns "input_ids", "token_type_ids" (0 for [CLS] A [SEP], 1 for B [SEP], 0 on padding),
    "attention_mask" (1 real, 0 padding), each [N, seq_len], and "nsp_labels" [N]
    (0 = B follows A, 1 = B is from a random other document). With nsp_prob=0 every B is
    the true continuation. Deterministic for a given seed.
    """
    if seq_len < 5:
        raise DataError(f"model.max_seq_len={seq_len}: BERT pairs need at least 5 positions")
    if info.cls_id is None or info.sep_id is None:
        raise DataError("tokenizer: a BERT model needs [CLS] and [SEP] tokens")
    values, lengths = flat_token_ids(token_ids_dataset)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    spans = _plan_pairs(starts, lengths, seq_len - 3, nsp_prob, seed)
    if not spans[0]:
        raise DataError(
            "data: no document has the 2 tokens a BERT pair needs; add longer documents"
        )
    a_start, a_len, b_start, b_len, labels = (np.asarray(x, dtype=np.int64) for x in spans)
    n = len(labels)
    input_ids = np.full((n, seq_len), info.pad_id, dtype=np.int64)
    token_type = np.zeros((n, seq_len), dtype=np.int64)
    rows = np.arange(n)
    sep1 = 1 + a_len  # [CLS] at 0, A at 1..a_len
    sep2 = sep1 + 1 + b_len  # B at sep1+1..sep2-1
    input_ids[:, 0] = info.cls_id
    _scatter(input_ids, values, a_start, a_len, np.ones(n, dtype=np.int64))
    input_ids[rows, sep1] = info.sep_id
    _scatter(input_ids, values, b_start, b_len, sep1 + 1)
    input_ids[rows, sep2] = info.sep_id
    cols = np.arange(seq_len)[None, :]
    real = cols <= sep2[:, None]
    token_type[(cols > sep1[:, None]) & real] = 1
    return {
        "input_ids": torch.from_numpy(input_ids),
        "token_type_ids": torch.from_numpy(token_type),
        "attention_mask": torch.from_numpy(real.astype(np.int64)),
        "nsp_labels": torch.from_numpy(labels),
    }


def _plan_pairs(
    starts: np.ndarray, lengths: np.ndarray, max_tokens: int, nsp_prob: float, seed: int
) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    """Choose each pair's A and B spans (offsets into the flat token array) and its label.

    As in BERT's create_pretraining_data, when B is random the real continuation is put
    back: the walk resumes right after A, so no text is skipped.
    """
    rng = random.Random(seed)  # scalar draws from `random` are ~10x cheaper than numpy's
    donors = [int(i) for i in np.flatnonzero(lengths > 0)]  # documents a random B can come from
    a_start: list[int] = []
    a_len: list[int] = []
    b_start: list[int] = []
    b_len: list[int] = []
    labels: list[int] = []
    for doc in range(len(lengths)):
        n, base, pos = int(lengths[doc]), int(starts[doc]), 0
        while n - pos >= 2:
            chunk = min(max_tokens, n - pos)
            split = rng.randint(1, chunk - 1)  # A and B each get at least one token
            a_start.append(base + pos)
            a_len.append(split)
            want = chunk - split
            if len(donors) > 1 and rng.random() < nsp_prob:
                # `doc` is itself a donor (it has tokens) and donors are sorted, so shifting
                # the draws at or past it by one picks uniformly among the other documents.
                k = rng.randrange(len(donors) - 1)
                other = donors[k + 1] if donors[k] >= doc else donors[k]
                other_len = int(lengths[other])
                offset = rng.randint(0, max(0, other_len - want))
                b_start.append(int(starts[other]) + offset)
                b_len.append(min(want, other_len - offset))
                labels.append(NOT_NEXT)
                pos += split
            else:
                b_start.append(base + pos + split)
                b_len.append(want)
                labels.append(IS_NEXT)
                pos += chunk
    return a_start, a_len, b_start, b_len, labels


def _scatter(
    out: np.ndarray, values: np.ndarray, src: np.ndarray, length: np.ndarray, dst: np.ndarray
) -> None:
    """out[i, dst[i]:dst[i]+length[i]] = values[src[i]:src[i]+length[i]] for all rows at once."""
    total = int(length.sum())
    if total == 0:
        return
    rows = np.repeat(np.arange(len(length)), length)
    # Position of each copied token within its own span: 0, 1, ..., length[i]-1.
    within = np.arange(total) - np.repeat(np.cumsum(length) - length, length)
    out[rows, np.repeat(dst, length) + within] = values[np.repeat(src, length) + within]
