"""Text data: load and clean a corpus, tokenize it once (cached), pack or pair it, batch it."""

from llmtune.data.loader import BatchIterator, iter_eval_batches
from llmtune.data.packing import pack_documents
from llmtune.data.pairs import build_pairs
from llmtune.data.sources import cache_root, load_corpus
from llmtune.data.tokenizer import (
    TokenizerInfo,
    get_tokenizer,
    tokenize_corpus,
    tokenizer_info,
    train_tokenizer,
)

__all__ = [
    "BatchIterator",
    "TokenizerInfo",
    "build_pairs",
    "cache_root",
    "get_tokenizer",
    "iter_eval_batches",
    "load_corpus",
    "pack_documents",
    "tokenize_corpus",
    "tokenizer_info",
    "train_tokenizer",
]
