"""The T5 tokenizer: T5's special ids, sentinels on top, </s> appended, clean decoding."""

from __future__ import annotations

import pytest

from llmtune.data.span_corruption import sentinel_ids
from llmtune.data.t5_tokenizer import train_t5_tokenizer
from tests.conftest import make_documents


@pytest.fixture(scope="module")
def tok():
    return train_t5_tokenizer(make_documents(200), vocab_size=300)


def test_special_ids_follow_t5(tok):
    # a corpus this small has fewer pieces than asked for: the size is an upper bound
    size = tok.get_vocab_size()
    assert 200 < size <= 300
    assert [tok.token_to_id(t) for t in ("<pad>", "</s>", "<unk>")] == [0, 1, 2]
    ids = [tok.token_to_id(f"<extra_id_{i}>") for i in range(100)]
    assert ids == sentinel_ids(size)  # <extra_id_0> is the last id, counting down


def test_encoding_ends_with_eos_and_decodes_back(tok):
    enc = tok.encode("The river   sings. <extra_id_0> quiet garden")
    top = tok.get_vocab_size() - 1
    assert enc.ids[-1] == 1 and enc.ids.count(top) == 1  # the sentinel stays one token
    assert tok.decode(enc.ids) == "The river sings. quiet garden"


def test_transformers_reads_it_as_a_t5_tokenizer(tok):
    transformers = pytest.importorskip("transformers")
    fast = transformers.T5TokenizerFast(
        tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0
    )
    assert fast("a quiet road").input_ids == tok.encode("a quiet road").ids
    assert fast.pad_token_id == 0 and fast.eos_token_id == 1


def test_too_small_a_vocabulary_is_refused():
    with pytest.raises(ValueError, match="vocab_size=150"):
        train_t5_tokenizer(["a b c"], vocab_size=150)
