"""The built-in corpus: CPython's own documentation topics, usable with no network and no files."""

from __future__ import annotations

import hashlib
import re

import datasets
from datasets.table import InMemoryTable

# A section starts at a title line underlined with ===, *** or --- (reStructuredText style).
_SECTION = re.compile(r"\n(?=[^\n]+\n[=*\-]{3,}\n)")
_PARAGRAPH = re.compile(r"\n[ \t]*\n")
# Long sections are cut at paragraph boundaries so that one document is not most of a split.
_MAX_DOC_CHARS = 4000


def builtin_documents() -> list[str]:
    """The pydoc topics (~465 KB of English) as ~250 documents: one per section, long ones split."""
    from pydoc_data.topics import topics  # ships with every CPython

    docs: list[str] = []
    for name in sorted(topics):
        for section in _SECTION.split(topics[name]):
            docs.extend(_chunk_paragraphs(section.strip(), _MAX_DOC_CHARS))
    return [d for d in docs if d]


def _chunk_paragraphs(text: str, max_chars: int) -> list[str]:
    """Group paragraphs into chunks of at most max_chars (a long paragraph stays)."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for para in _PARAGRAPH.split(text):
        if current and size + len(para) > max_chars:
            chunks.append("\n\n".join(current))
            current, size = [], 0
        current.append(para)
        size += len(para) + 2
    if current:
        chunks.append("\n\n".join(current))
    return chunks


def load_builtin() -> datasets.Dataset:
    """The built-in corpus as a Dataset with one "text" column.

    The fingerprint is derived from the content, so caches keyed on it (tokenizer, tokenized
    splits) survive across runs and change when a new Python ships different docs.
    """
    docs = builtin_documents()
    digest = hashlib.sha256("\x00".join(docs).encode()).hexdigest()[:16]
    table = InMemoryTable.from_pydict({"text": docs})
    return datasets.Dataset(table, fingerprint=f"builtin-{digest}")
