"""BERT pairs from a token store: [CLS] A [SEP] B [SEP] layout, token types, padding, NSP
labels and continuations; any pair built alone, the same in any process and order."""

import numpy as np
import pytest
import torch

from llmtune.data.pairs import build_pairs
from llmtune.data.tokenizer import TokenizerInfo

INFO = TokenizerInfo(
    vocab_size=100_000,
    pad_id=0,
    unk_id=1,
    special_ids=(0, 1, 2, 3, 4),
    cls_id=2,
    sep_id=3,
    mask_id=4,
)
SEQ = 32


def _docs(n_docs: int = 60, seed: int = 0) -> list[list[int]]:
    """Token t of document d is 1000 * (d + 1) + t: every token says where it came from."""
    rng = np.random.default_rng(seed)
    return [[1000 * (d + 1) + t for t in range(int(rng.integers(1, 90)))] for d in range(n_docs)]


@pytest.fixture
def build(make_store):
    def make(docs, nsp_prob, seed=0, epoch=0):
        pairs = build_pairs(make_store(docs, key=f"k{len(docs)}"), SEQ, INFO, nsp_prob, seed)
        return pairs.rows(torch.arange(len(pairs)), epoch)

    return make


def _segments(row: torch.Tensor) -> tuple[list[int], list[int], int]:
    ids = row.tolist()
    assert ids[0] == INFO.cls_id
    sep1 = ids.index(INFO.sep_id)
    sep2 = ids.index(INFO.sep_id, sep1 + 1)
    return ids[1:sep1], ids[sep1 + 1 : sep2], sep2


def test_layout_token_types_and_padding(build):
    out = build(_docs(), nsp_prob=0.5)
    n = out["nsp_labels"].shape[0]
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert out[key].shape == (n, SEQ) and out[key].dtype == torch.int64
    assert out["nsp_labels"].shape == (n,)
    for i in range(n):
        a, b, sep2 = _segments(out["input_ids"][i])
        assert a and b and INFO.sep_id not in a + b and INFO.cls_id not in a + b
        length = sep2 + 1
        types = out["token_type_ids"][i].tolist()
        assert types == [0] * (len(a) + 2) + [1] * (len(b) + 1) + [0] * (SEQ - length)
        assert out["attention_mask"][i].tolist() == [1] * length + [0] * (SEQ - length)
        assert (out["input_ids"][i, length:] == INFO.pad_id).all()


def test_nsp_share_matches_probability_and_labels_mean_what_they_say(build):
    out = build(_docs(200), nsp_prob=0.5)
    labels = out["nsp_labels"]
    assert 0.42 < labels.float().mean().item() < 0.58
    for i in range(labels.shape[0]):
        a, b, _ = _segments(out["input_ids"][i])
        same_doc = a[-1] // 1000 == b[0] // 1000
        if labels[i] == 0:
            assert same_doc and b[0] == a[-1] + 1  # B starts right where A ends
        else:
            assert not same_doc


def test_without_nsp_every_b_is_the_continuation_and_no_text_is_lost(build):
    docs = _docs()
    out = build(docs, nsp_prob=0.0)
    assert "nsp_labels" not in out  # plain mlm: no NSP head to feed
    seen: dict[int, list[int]] = {}
    for row in out["input_ids"]:
        a, b, _ = _segments(row)
        assert b[0] == a[-1] + 1
        seen.setdefault(a[0] // 1000 - 1, []).extend(a + b)
    for d, doc in enumerate(docs):
        if len(doc) >= 2:  # a 1-token doc (or tail) cannot form a pair
            assert seen[d] == doc[: len(seen[d])] and len(doc) - len(seen[d]) <= 1
        else:
            assert d not in seen


def test_short_documents_give_padded_pairs(build):
    out = build([[11, 12, 13]], nsp_prob=0.5)  # one doc: no other doc to draw from
    assert out["nsp_labels"].tolist() == [0]
    a, b, sep2 = _segments(out["input_ids"][0])
    assert a + b == [11, 12, 13] and out["attention_mask"][0].sum() == sep2 + 1 == 6


def test_deterministic_per_seed_and_redrawn_each_epoch(build):
    docs = _docs()
    a, b, c = build(docs, 0.5, seed=3), build(docs, 0.5, seed=3), build(docs, 0.5, seed=4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["input_ids"], c["input_ids"])
    later = build(docs, 0.5, seed=3, epoch=1)  # new split points and NSP draws, same chunks
    assert later["input_ids"].shape == a["input_ids"].shape
    assert not torch.equal(later["input_ids"], a["input_ids"])


def test_a_pair_is_the_same_built_alone_or_in_any_batch(make_store):
    pairs = build_pairs(make_store(_docs()), SEQ, INFO, 0.5, seed=1)
    every = pairs.rows(torch.arange(len(pairs)), epoch=2)
    index = torch.tensor([9, 2, 2, 40])
    some = pairs.rows(index, epoch=2)
    assert all(torch.equal(some[k], every[k][index]) for k in every)


@pytest.mark.parametrize("nsp_prob", [0.0, 0.5])
def test_pairs_never_exceed_seq_len(build, nsp_prob):
    out = build(_docs(30, seed=1), nsp_prob)
    assert (out["attention_mask"].sum(1) <= SEQ).all()
    assert (out["attention_mask"].sum(1) >= 5).all()
