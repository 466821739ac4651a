"""Text data: stream and clean a corpus, tokenize it once into an on-disk token store, read
packed windows or sentence pairs from it, and batch them."""

from llmtune.data.corpus import TextSplit, load_corpus, open_corpus
from llmtune.data.loader import BatchIterator, iter_eval_batches, train_batches
from llmtune.data.packing import pack_documents
from llmtune.data.pairs import build_pairs
from llmtune.data.pipeline import PreparedData, lm_examples, prepare_data, prepare_once
from llmtune.data.rows import Rows, to_tensors
from llmtune.data.sources import cache_root
from llmtune.data.store import TokenStore
from llmtune.data.tokenizer import (
    TokenizerInfo,
    get_tokenizer,
    tokenizer_info,
    train_tokenizer,
)

__all__ = [
    "BatchIterator",
    "PreparedData",
    "Rows",
    "TextSplit",
    "TokenStore",
    "TokenizerInfo",
    "build_pairs",
    "cache_root",
    "get_tokenizer",
    "iter_eval_batches",
    "lm_examples",
    "load_corpus",
    "open_corpus",
    "pack_documents",
    "prepare_data",
    "prepare_once",
    "to_tensors",
    "tokenizer_info",
    "train_batches",
    "train_tokenizer",
]
