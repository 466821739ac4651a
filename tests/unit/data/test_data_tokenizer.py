"""Tokenizers: round trips, special ids, determinism, the trained-tokenizer and tokenized caches."""

import json

import datasets
import pytest

from llmtune.config.schema import TokenizerConfig
from llmtune.data import tokenizer as tokmod
from llmtune.data.tokenizer import (
    get_tokenizer,
    tokenize_corpus,
    tokenizer_info,
    train_tokenizer,
)
from llmtune.errors import DataError

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A lazy dog sleeps; the quick fox runs away!",
    "Tokenizers split text into pieces: words, subwords and bytes.",
    "Café naïve résumé — unicode text, with émojis 🙂 and tabs\tand\nnewlines.",
] * 20


@pytest.fixture(scope="module")
def wordpiece():
    return train_tokenizer(CORPUS, "wordpiece", 300, 1, True)


@pytest.fixture(scope="module")
def bpe():
    return train_tokenizer(CORPUS, "bpe", 400, 1, False)


def test_wordpiece_round_trips_lowercased(wordpiece):
    text = "The quick brown fox jumps over the lazy dog."
    enc = wordpiece.encode(text)
    assert enc.tokens[0] == "[CLS]" and enc.tokens[-1] == "[SEP]"
    assert wordpiece.decode(enc.ids) == text.lower()
    assert any(t.startswith("##") for t in wordpiece.encode("tokenizersx").tokens)


def test_wordpiece_special_ids_and_pair_template(wordpiece):
    info = tokenizer_info(wordpiece, "wordpiece")
    assert (info.pad_id, info.unk_id, info.cls_id, info.sep_id, info.mask_id) == (0, 1, 2, 3, 4)
    assert info.special_ids == (0, 1, 2, 3, 4)
    assert info.vocab_size == wordpiece.get_vocab_size()
    pair = wordpiece.encode("quick fox", "lazy dog")
    assert pair.ids[0] == info.cls_id and pair.ids.count(info.sep_id) == 2
    first_sep = pair.ids.index(info.sep_id)
    assert pair.type_ids == [0] * (first_sep + 1) + [1] * (len(pair.ids) - first_sep - 1)
    # "[MASK]" in raw text is the mask token, not split into pieces.
    assert info.mask_id in wordpiece.encode("the [MASK] fox").ids


def test_bpe_round_trips_exactly(bpe):
    for text in CORPUS[:4] + ["  leading spaces, UPPER case, 12345 and ünïcödé ✓ never seen"]:
        ids = bpe.encode(text).ids
        assert bpe.decode(ids) == text
    info = tokenizer_info(bpe, "bpe")
    assert info.eos_id == bpe.token_to_id("<|endoftext|>") == info.pad_id
    assert info.special_ids == (info.eos_id,)
    assert info.eos_id not in bpe.encode("hello world").ids  # GPT-2 adds no specials


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_training_is_deterministic(kind):
    a = train_tokenizer(CORPUS, kind, 300, 1, True)
    b = train_tokenizer(iter(CORPUS), kind, 300, 1, True)
    assert a.to_str() == b.to_str()


def test_unknown_kind_is_refused():
    with pytest.raises(DataError, match="tokenizer.kind='sentencepiece'"):
        train_tokenizer(CORPUS, "sentencepiece", 100, 1, True)


def test_get_tokenizer_caches_trained_tokenizer(tmp_path, monkeypatch):
    ds = datasets.Dataset.from_dict({"text": CORPUS})
    cfg = TokenizerConfig(vocab_size=300, min_frequency=1)
    first = get_tokenizer(cfg, "bpe", ds, tmp_path)
    cached = list((tmp_path / "tokenizers").glob("*/tokenizer.json"))
    assert len(cached) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("trained again despite a cached tokenizer")

    monkeypatch.setattr(tokmod, "train_tokenizer", no_training)
    assert get_tokenizer(cfg, "bpe", ds, tmp_path).to_str() == first.to_str()
    with pytest.raises(AssertionError, match="trained again"):  # another setting, another key
        get_tokenizer(TokenizerConfig(vocab_size=301, min_frequency=1), "bpe", ds, tmp_path)


def test_get_tokenizer_auto_kind_follows_family(tmp_path):
    ds = datasets.Dataset.from_dict({"text": CORPUS})
    cfg = TokenizerConfig(vocab_size=300, min_frequency=1)
    bert = get_tokenizer(cfg, "wordpiece", ds, tmp_path)
    assert bert.token_to_id("[MASK]") == 4
    gpt = get_tokenizer(cfg, "bpe", ds, tmp_path)
    assert gpt.token_to_id("<|endoftext|>") == 0 and gpt.token_to_id("[MASK]") is None


def test_file_kind_loads_json_and_folders(tmp_path, wordpiece):
    wordpiece.save(str(tmp_path / "tokenizer.json"))
    cfg = TokenizerConfig(kind="file", path=str(tmp_path / "tokenizer.json"))
    text = "the lazy fox"
    assert (
        get_tokenizer(cfg, "wordpiece", None, tmp_path).encode(text).ids
        == wordpiece.encode(text).ids
    )
    cfg = TokenizerConfig(kind="file", path=str(tmp_path))
    assert (
        get_tokenizer(cfg, "wordpiece", None, tmp_path).encode(text).ids
        == wordpiece.encode(text).ids
    )


def test_file_kind_builds_bert_from_vocab_txt(tmp_path, wordpiece):
    vocab = sorted(wordpiece.get_vocab().items(), key=lambda kv: kv[1])
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "vocab.txt").write_text("".join(tok + "\n" for tok, _ in vocab))
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    cfg = TokenizerConfig(kind="file", path=str(folder), lowercase=False)
    loaded = get_tokenizer(cfg, "wordpiece", None, tmp_path)
    for text in ["The Quick brown fox.", "tokenizers split words", "quick fox", "lazy dog"]:
        assert loaded.encode(text).ids == wordpiece.encode(text).ids
    assert loaded.decode(loaded.encode("The Lazy dog").ids) == "the lazy dog"
    assert loaded.encode("the [MASK] fox").ids == wordpiece.encode("the [MASK] fox").ids


def test_file_kind_errors_name_tokenizer_path(tmp_path, bpe):
    with pytest.raises(DataError, match=r"tokenizer\.path: '.*missing\.json' does not exist"):
        get_tokenizer(TokenizerConfig(kind="file", path="missing.json"), "bpe", None, tmp_path)
    with pytest.raises(DataError, match=r"tokenizer\.path: empty"):
        get_tokenizer(TokenizerConfig(kind="file"), "bpe", None, tmp_path)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DataError, match=r"tokenizer\.path: cannot read"):
        get_tokenizer(TokenizerConfig(kind="file", path="broken.json"), "bpe", None, tmp_path)
    with pytest.raises(DataError, match=r"tokenizer\.path: no tokenizer\.json in"):
        get_tokenizer(TokenizerConfig(kind="file", path=str(tmp_path)), "bpe", None, tmp_path)
    # A GPT tokenizer lacks [CLS], [MASK], ...: a BERT model cannot use it.
    with pytest.raises(DataError, match=r"no \[PAD\] token"):
        tokenizer_info(bpe, "wordpiece")


class CountingTokenizer:
    """Duck-typed stand-in that records how often tokenization really runs."""

    def __init__(self, tok):
        self.tok, self.calls = tok, 0

    def to_str(self):
        return self.tok.to_str()

    def encode_batch(self, texts, add_special_tokens=True):
        self.calls += 1
        return self.tok.encode_batch(texts, add_special_tokens=add_special_tokens)


def test_tokenize_corpus_matches_tokenizer_and_is_cached(tmp_path, bpe):
    ds = datasets.Dataset.from_dict({"text": CORPUS[:8]})
    spy = CountingTokenizer(bpe)
    first = tokenize_corpus(ds, spy, tmp_path)
    assert first.column_names == ["input_ids"]
    expected = [bpe.encode(t, add_special_tokens=False).ids for t in CORPUS[:8]]
    assert [list(x) for x in first["input_ids"]] == expected
    assert spy.calls >= 1 and len(list((tmp_path / "tokenized").glob("*.arrow"))) == 1

    again = CountingTokenizer(bpe)
    second = tokenize_corpus(ds, again, tmp_path)
    assert again.calls == 0  # served from the Arrow cache file
    assert [list(x) for x in second["input_ids"]] == expected


def test_tokenize_corpus_cache_key_depends_on_tokenizer_and_data(tmp_path, bpe, wordpiece):
    ds = datasets.Dataset.from_dict({"text": CORPUS[:8]})
    tokenize_corpus(ds, bpe, tmp_path)
    tokenize_corpus(ds, wordpiece, tmp_path)
    tokenize_corpus(ds.select([0, 1]), bpe, tmp_path)
    assert len(list((tmp_path / "tokenized").glob("*.arrow"))) == 3
