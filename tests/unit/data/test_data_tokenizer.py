"""Tokenizers: round trips, special ids, determinism, the trained-tokenizer and tokenized caches."""

import json

import pytest

from llmtune.config.schema import TokenizerConfig
from llmtune.data import tokenizer as tokmod
from llmtune.data.tokenizer import (
    get_tokenizer,
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


def test_get_tokenizer_caches_trained_tokenizer(tmp_path, monkeypatch, text_split):
    ds = [text_split(CORPUS)]
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


def test_get_tokenizer_auto_kind_follows_family(tmp_path, text_split):
    ds = [text_split(CORPUS)]
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
        get_tokenizer(cfg, "wordpiece", [], tmp_path).encode(text).ids == wordpiece.encode(text).ids
    )
    cfg = TokenizerConfig(kind="file", path=str(tmp_path))
    assert (
        get_tokenizer(cfg, "wordpiece", [], tmp_path).encode(text).ids == wordpiece.encode(text).ids
    )


def test_file_kind_builds_bert_from_vocab_txt(tmp_path, wordpiece):
    vocab = sorted(wordpiece.get_vocab().items(), key=lambda kv: kv[1])
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "vocab.txt").write_text("".join(tok + "\n" for tok, _ in vocab))
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    cfg = TokenizerConfig(kind="file", path=str(folder), lowercase=False)
    loaded = get_tokenizer(cfg, "wordpiece", [], tmp_path)
    for text in ["The Quick brown fox.", "tokenizers split words", "quick fox", "lazy dog"]:
        assert loaded.encode(text).ids == wordpiece.encode(text).ids
    assert loaded.decode(loaded.encode("The Lazy dog").ids) == "the lazy dog"
    assert loaded.encode("the [MASK] fox").ids == wordpiece.encode("the [MASK] fox").ids


def test_file_kind_errors_name_tokenizer_path(tmp_path, bpe):
    with pytest.raises(DataError, match=r"tokenizer\.path: '.*missing\.json' does not exist"):
        get_tokenizer(TokenizerConfig(kind="file", path="missing.json"), "bpe", [], tmp_path)
    with pytest.raises(DataError, match=r"tokenizer\.path: empty"):
        get_tokenizer(TokenizerConfig(kind="file"), "bpe", [], tmp_path)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DataError, match=r"tokenizer\.path: cannot read"):
        get_tokenizer(TokenizerConfig(kind="file", path="broken.json"), "bpe", [], tmp_path)
    with pytest.raises(DataError, match=r"tokenizer\.path: no tokenizer\.json in"):
        get_tokenizer(TokenizerConfig(kind="file", path=str(tmp_path)), "bpe", [], tmp_path)
    # A GPT tokenizer lacks [CLS], [MASK], ...: a BERT model cannot use it.
    with pytest.raises(DataError, match=r"no \[PAD\] token"):
        tokenizer_info(bpe, "wordpiece")


class Passes:
    """A re-iterable corpus that counts how often it is read."""

    def __init__(self, texts):
        self.texts, self.passes = texts, 0

    def __iter__(self):
        self.passes += 1
        yield from self.texts


def test_wordpiece_streams_a_reiterable_corpus_twice_instead_of_listing_it():
    corpus = Passes(CORPUS)
    streamed = train_tokenizer(corpus, "wordpiece", 300, 1, True)
    assert corpus.passes == 2  # characters, then training: never a list of every text
    assert streamed.to_str() == train_tokenizer(list(CORPUS), "wordpiece", 300, 1, True).to_str()


def test_train_docs_trains_on_an_evenly_spaced_sample(tmp_path, text_split):
    docs = [f"document {i} " + " ".join(["w" + str(i % 7)] * 5) for i in range(100)]
    split = text_split(docs)
    assert [d for b in split.batches(sample=4) for d in b] == [docs[i] for i in (24, 49, 74, 99)]
    cfg = TokenizerConfig(vocab_size=300, min_frequency=1, train_docs=4)
    sampled = get_tokenizer(cfg, "bpe", [split], tmp_path)
    explicit = train_tokenizer([docs[i] for i in (24, 49, 74, 99)], "bpe", 300, 1, False)
    assert sampled.to_str() == explicit.to_str()
