"""Runs shared by end-to-end modules that only read them (copy before changing one)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import make_documents
from tests.e2e.helpers import TINY_GPT, pretrain


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny-corpus") / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in make_documents(120)))
    return path


@pytest.fixture(scope="session")
def tiny_gpt_run(tmp_path_factory, tiny_corpus) -> Path:
    """A tiny GPT run of 6 steps with checkpoints at steps 3 and 6 (latest 6, best 6)."""
    run = tmp_path_factory.mktemp("tiny-gpt") / "run"
    steps = ("train.max_steps=6", "train.save_every=3", "train.eval_every=3")
    pretrain(run, tiny_corpus, *TINY_GPT, *steps, "checkpoint.keep_last=5")
    return run
