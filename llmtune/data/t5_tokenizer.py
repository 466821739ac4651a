"""The T5 tokenizer: a SentencePiece-style unigram model (as T5's own spm) with T5's special
tokens: <pad> = 0, </s> = 1, <unk> = 2, and 100 sentinels <extra_id_99>..<extra_id_0> on top,
so <extra_id_0> is the last id as in Hugging Face T5 tokenizers. Encoding appends </s>.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import (
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from llmtune.data.span_corruption import N_SENTINELS, sentinel_tokens

T5_PAD, T5_EOS, T5_UNK = "<pad>", "</s>", "<unk>"
T5_SPECIALS = (T5_PAD, T5_EOS, T5_UNK)  # ids 0, 1, 2


def _pipeline(tok: Tokenizer) -> None:
    """Normalise as T5's spm (NFKC, runs of spaces as one), split on spaces into ▁-words."""
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " "), normalizers.Strip()]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")


def add_t5_specials(tok: Tokenizer, n_sentinels: int = N_SENTINELS) -> Tokenizer:
    """Append the sentinels (highest ids) and the post-processor that ends each text with
    </s>; the tokenizer must already hold <pad>, </s>, <unk>."""
    tok.add_special_tokens(sentinel_tokens(n_sentinels))
    eos = tok.token_to_id(T5_EOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {T5_EOS}", pair=f"$A {T5_EOS} $B {T5_EOS}", special_tokens=[(T5_EOS, eos)]
    )
    return tok


def train_t5_tokenizer(
    texts: Iterable[str], vocab_size: int, n_sentinels: int = N_SENTINELS
) -> Tokenizer:
    """Train a unigram tokenizer of at most `vocab_size` ids in all, sentinels included (a
    small corpus may yield fewer pieces; the sentinels are always the top ids)."""
    base = vocab_size - n_sentinels
    if base < 100:
        raise ValueError(f"tokenizer.vocab_size={vocab_size} leaves too few ids beside sentinels")
    tok = Tokenizer(models.Unigram())
    _pipeline(tok)
    trainer = trainers.UnigramTrainer(
        vocab_size=base,
        special_tokens=list(T5_SPECIALS),
        unk_token=T5_UNK,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return add_t5_specials(tok, n_sentinels)
