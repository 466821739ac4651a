"""Shared test setup: offline, a private cache, small threads, and tiny generated corpora."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent
REAL_DATA = Path(os.environ.get("LLMTUNE_REAL_DATA", REPO_ROOT.parent / "shared" / "data"))

WORDS = [
    "the",
    "a",
    "river",
    "city",
    "model",
    "data",
    "train",
    "light",
    "stone",
    "garden",
    "music",
    "paper",
    "window",
    "road",
    "winter",
    "summer",
    "north",
    "south",
    "bright",
    "quiet",
    "ancient",
    "modern",
    "small",
    "large",
    "green",
    "blue",
    "red",
    "walks",
    "sings",
    "reads",
    "writes",
    "builds",
    "opens",
    "closes",
    "follows",
    "finds",
    "keeps",
]


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["LLMTUNE_CACHE"] = str(tmp_path_factory.mktemp("llmtune-cache"))


def make_documents(n_docs: int, seed: int = 0, sentences: int = 6) -> list[str]:
    """Deterministic pseudo-English documents with enough repetition to learn from."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        sents = []
        for _ in range(sentences):
            words = [rng.choice(WORDS) for _ in range(rng.randint(5, 12))]
            sents.append(" ".join(words).capitalize() + ".")
        docs.append(" ".join(sents))
    return docs


@pytest.fixture
def jsonl_corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.jsonl"
    with path.open("w") as f:
        for doc in make_documents(120):
            f.write(json.dumps({"text": doc}) + "\n")
    return path


def real_data(*parts: str) -> Path:
    """A file of the shared real-data folder, or skip the test when it is absent."""
    path = REAL_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available at {path} (set LLMTUNE_REAL_DATA)")
    return path
