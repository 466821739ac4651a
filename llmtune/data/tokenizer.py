"""Tokenizers: train a BERT WordPiece or GPT-2 byte-level BPE tokenizer (cached), or load one.

Also `TokenizerInfo`, the special-token ids the rest of llmtune needs, checked once here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from llmtune.config.schema import TokenizerConfig
from llmtune.console import note
from llmtune.data.corpus import TextSplit
from llmtune.errors import DataError

BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # [PAD] first so pad_id == 0
GPT_EOS = "<|endoftext|>"


@dataclass(frozen=True)
class TokenizerInfo:
    """Vocabulary size and special-token ids. bert fills cls/sep/mask; gpt fills eos (= pad)."""

    vocab_size: int
    pad_id: int
    unk_id: int | None
    special_ids: tuple[int, ...]
    cls_id: int | None = None
    sep_id: int | None = None
    mask_id: int | None = None
    eos_id: int | None = None


def train_tokenizer(
    texts: Iterable[str], kind: str, vocab_size: int, min_frequency: int, lowercase: bool
) -> Tokenizer:
    """Train a "wordpiece" (BERT) or "bpe" (GPT-2 byte-level) tokenizer; deterministic per input."""
    if kind == "wordpiece":
        # two passes (characters, then training): a one-shot iterator is read into a list,
        # a re-iterable (a corpus split) is streamed twice
        texts = list(texts) if iter(texts) is texts else texts
        return _train_wordpiece(texts, vocab_size, min_frequency, lowercase)
    if kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        # Offsets only; GPT-2 adds no special tokens around a sequence.
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[GPT_EOS],
            # All 256 bytes are in the vocabulary, so any text encodes without an unknown token.
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return tok
    raise DataError(f"tokenizer.kind={kind!r} is unknown; use auto, wordpiece, bpe or file")


def _train_wordpiece(
    texts: Iterable[str], vocab_size: int, min_frequency: int, lowercase: bool
) -> Tokenizer:
    """BERT WordPiece training, made deterministic.

    The upstream trainer numbers "##x" tokens in hash-map order, which changes merge tie-breaks
    from run to run (huggingface/tokenizers#1794). Declaring every "##x" up front, in sorted
    order, as a special token fixes their ids; they are then turned back into ordinary tokens.
    """
    tok = _bert_pipeline(models.WordPiece(unk_token="[UNK]"), lowercase)
    chars: set[str] = set()
    for text in texts:
        chars.update(tok.normalizer.normalize_str(text))
    continuations = [f"##{c}" for c in sorted(chars) if not c.isspace()]
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[*BERT_SPECIALS, *continuations],
        continuing_subword_prefix="##",
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    state = json.loads(tok.to_str())
    state["added_tokens"] = [t for t in state["added_tokens"] if t["content"] in BERT_SPECIALS]
    tok = Tokenizer.from_str(json.dumps(state))
    _add_bert_template(tok)
    return tok


def _bert_pipeline(model: models.Model, lowercase: bool) -> Tokenizer:
    tok = Tokenizer(model)
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def _add_bert_template(tok: Tokenizer) -> None:
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )


def resolve_kind(cfg: TokenizerConfig, native: str) -> str:
    """tokenizer.kind with "auto" resolved to `native`, the model family's tokenizer kind."""
    return native if cfg.kind == "auto" else cfg.kind


class _Texts:
    """The documents of some splits, re-iterable (each pass streams them again); with
    `sample` > 0 an evenly spaced sample of about that many, shared by the splits' sizes."""

    def __init__(self, splits: list[TextSplit], sample: int) -> None:
        self.splits = splits
        self.seen = 0  # documents in the last full pass (wordpiece reads them twice)
        self.shares = [0] * len(splits)
        if sample > 0 and len(splits) == 1:
            self.shares = [sample]
        elif sample > 0:
            sizes = [s.n_docs() for s in splits]
            self.shares = [max(1, round(sample * n / sum(sizes))) for n in sizes]

    def __iter__(self) -> Iterator[str]:
        seen = 0
        for split, share in zip(self.splits, self.shares, strict=True):
            for batch in split.batches(sample=share):
                seen += len(batch)
                yield from batch
        self.seen = seen


def get_tokenizer(
    cfg: TokenizerConfig, native: str, train: list[TextSplit], cache_dir: Path
) -> Tokenizer:
    """Load tokenizer.path (kind=file) or train on the train split(s), streamed (or on a
    tokenizer.train_docs sample of them), reusing a cached result.

    `native` is the model family's tokenizer kind (wordpiece | bpe): what kind=auto trains and
    which special tokens a loaded file must have.
    """
    kind = resolve_kind(cfg, native)
    if kind == "file":
        return load_tokenizer_file(cfg.path, native, cfg.lowercase)
    if kind not in {"wordpiece", "bpe"}:
        raise DataError(f"tokenizer.kind={kind!r} is unknown; use auto, wordpiece, bpe or file")
    path = tokenizer_cache_path(cfg, kind, train, cache_dir)
    if path.is_file():
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception:  # the Rust parser raises a bare Exception; the file is rebuilt below
            print(f"warning: the cached tokenizer {path} is corrupt; training it again")
        else:
            note(f"reused the cached {kind} tokenizer {path}")
            return tok
    texts = _Texts(train, cfg.train_docs)
    tok = train_tokenizer(texts, kind, cfg.vocab_size, cfg.min_frequency, cfg.lowercase)
    note(f"trained {kind} ({tok.get_vocab_size():,} tokens) on {texts.seen:,} documents")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so a crashed or concurrent run never leaves a half-written cache entry.
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tok.save(str(tmp))
    os.replace(tmp, path)
    return tok


def tokenizer_cache_path(
    cfg: TokenizerConfig, kind: str, train: list[TextSplit], cache_dir: Path
) -> Path:
    """Where the tokenizer trained on `train` with these settings is cached."""
    key_fields = [
        [split.fingerprint for split in train],
        kind,
        cfg.vocab_size,
        cfg.min_frequency,
        cfg.lowercase,
        cfg.train_docs,
    ]
    key = hashlib.sha256(json.dumps(key_fields).encode()).hexdigest()[:16]
    return Path(cache_dir) / "tokenizers" / key / "tokenizer.json"


def load_tokenizer_file(path: str, native: str, lowercase: bool = True) -> Tokenizer:
    """Load a tokenizer.json, or a Hugging Face tokenizer folder (tokenizer.json, or vocab.txt
    for a `native` wordpiece tokenizer)."""
    if not path:
        raise DataError("tokenizer.path: empty; set it to a tokenizer.json or a tokenizer folder")
    p = Path(path).expanduser()
    if p.is_dir():
        if (p / "tokenizer.json").is_file():
            p = p / "tokenizer.json"
        elif (p / "vocab.txt").is_file() and native == "wordpiece":
            return _wordpiece_from_vocab(p, lowercase)
        else:
            wanted = "tokenizer.json or vocab.txt" if native == "wordpiece" else "tokenizer.json"
            raise DataError(f"tokenizer.path: no {wanted} in '{path}'; point it at a tokenizer")
    if not p.is_file():
        raise DataError(f"tokenizer.path: '{path}' does not exist; check the path")
    try:
        return Tokenizer.from_file(str(p))
    except Exception as exc:  # the Rust parser raises a bare Exception with a long message
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise DataError(
            f"tokenizer.path: cannot read '{path}' as a tokenizer.json: {first}"
        ) from exc


def _wordpiece_from_vocab(folder: Path, lowercase: bool) -> Tokenizer:
    """Rebuild a BERT tokenizer from vocab.txt, honouring do_lower_case if the folder says so."""
    config = folder / "tokenizer_config.json"
    if config.is_file():
        # A broken side file should not stop us; the vocabulary is what matters.
        with contextlib.suppress(json.JSONDecodeError, AttributeError):
            lowercase = bool(json.loads(config.read_text()).get("do_lower_case", lowercase))
    vocab = models.WordPiece.read_file(str(folder / "vocab.txt"))
    if "[UNK]" not in vocab:
        raise DataError(f"tokenizer.path: '{folder / 'vocab.txt'}' has no [UNK]; not a BERT vocab")
    tok = _bert_pipeline(models.WordPiece(vocab, unk_token="[UNK]"), lowercase)
    # Registered as special so "[MASK]" in text stays one token and decode() can skip them.
    tok.add_special_tokens([t for t in BERT_SPECIALS if t in vocab])
    if "[CLS]" in vocab and "[SEP]" in vocab:
        _add_bert_template(tok)
    return tok


def tokenizer_info(tok: Tokenizer, kind: str) -> TokenizerInfo:
    """Special-token ids of a `kind` tokenizer (the model family's: wordpiece | bpe); a
    DataError if the tokenizer lacks one the model needs."""

    def need(token: str) -> int:
        idx = tok.token_to_id(token)
        if idx is None:
            raise DataError(
                f"tokenizer.path: the tokenizer has no {token} token, which a model with a "
                f"{kind} tokenizer needs; use a matching tokenizer or train one "
                "(tokenizer.kind=auto)"
            )
        return idx

    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    if kind == "wordpiece":
        ids = {t: need(t) for t in BERT_SPECIALS}
        return TokenizerInfo(
            vocab_size=vocab_size,
            pad_id=ids["[PAD]"],
            unk_id=ids["[UNK]"],
            special_ids=tuple(sorted(set(ids.values()))),
            cls_id=ids["[CLS]"],
            sep_id=ids["[SEP]"],
            mask_id=ids["[MASK]"],
        )
    if kind == "bpe":
        eos = need(GPT_EOS)
        # GPT-2 has no pad token; padding positions are masked out of the loss anyway.
        return TokenizerInfo(
            vocab_size=vocab_size,
            pad_id=eos,
            unk_id=tok.token_to_id("<unk>"),
            special_ids=(eos,),
            eos_id=eos,
        )
    raise DataError(f"tokenizer kind {kind!r} is unknown; use wordpiece or bpe")


def tokenizer_hash(tok: Tokenizer) -> str:
    """A short content hash of the full tokenizer (vocabulary, merges, normaliser, ...)."""
    return hashlib.sha256(tok.to_str().encode()).hexdigest()[:16]
