"""span_corruption and seq2seq objectives: their batches, counts and losses, and that a
tiny T5 learns from each."""

from __future__ import annotations

import dataclasses

import datasets
import pytest
import torch

from llmtune.data.span_corruption import sentinel_ids, span_corruption_lengths
from llmtune.data.t5_tokenizer import train_t5_tokenizer
from llmtune.models import build_model
from llmtune.models.t5_layers import T5Config
from llmtune.objectives.denoising import Denoising
from llmtune.objectives.seq2seq import Seq2Seq, shift_right
from llmtune.objectives.span_corruption import SpanCorruption
from tests.conftest import make_documents

TINY = T5Config(
    vocab_size=0,
    d_model=64,
    n_layers=2,
    n_heads=4,
    d_kv=16,
    d_ff=128,
    max_seq_len=32,
    dropout=0.0,
    attn_dropout=0.0,
)


@pytest.fixture(scope="module")
def tok():
    return train_t5_tokenizer(make_documents(300, seed=1), vocab_size=400)


def _train(model, objective, examples, steps: int, lr: float = 3e-3) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for step in range(steps):
        rows = torch.arange(step * 8, step * 8 + 8) % len(examples["input_ids"])
        batch = objective.prepare({k: v[rows] for k, v in examples.items()}, gen)
        term = objective.losses(model, batch)[objective.lm_term]
        loss = term.loss_sum / objective.count(batch)[objective.lm_term]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_shift_right_starts_with_the_start_id():
    labels = torch.tensor([[5, 6, 1, -100], [7, 8, 9, 1]])
    assert shift_right(labels, 0).tolist() == [[0, 5, 6, 1], [0, 7, 8, 9]]


def _windows(objective, docs: list[list[int]], folder) -> dict:
    """The objective's examples of `docs`, read from a token store as pretraining reads them."""
    import numpy as np

    from llmtune.data.store import StoreWriter, store_dtype

    writer = StoreWriter(folder / "stores", "s", store_dtype(100_000), {})
    writer.add(np.concatenate([np.asarray(d) for d in docs]), np.array([len(d) for d in docs]))
    windows = objective.make_examples(writer.commit(), 32, 0)
    return windows.rows(torch.arange(len(windows)))


def test_span_corruption_fills_the_encoder_and_learns(tok, tmp_path):
    size = tok.get_vocab_size()
    docs = [tok.encode(d, add_special_tokens=False).ids for d in make_documents(300, seed=2)]
    objective = SpanCorruption(eos_id=1, start_id=0, sentinels=sentinel_ids(size))
    examples = _windows(objective, docs, tmp_path)
    raw_len, target_len = span_corruption_lengths(32)
    assert examples["input_ids"].shape[1] == raw_len
    batch = objective.prepare(examples, torch.Generator().manual_seed(0))
    assert batch["input_ids"].shape == (len(docs_rows := examples["input_ids"]), 32)
    assert batch["labels"].shape == (len(docs_rows), target_len)
    assert torch.equal(batch["decoder_input_ids"][:, 1:], batch["labels"][:, :-1])
    assert int(objective.count(batch)["span_corruption"]) == batch["labels"].numel()
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(TINY, vocab_size=size), ("lm",))
    losses = _train(model, objective, examples, steps=40)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0


def test_seq2seq_encodes_pairs_with_eos_and_learns_a_mapping(tok):
    # the target is the source's words in reverse: learnable only through cross-attention
    sources = [" ".join(d.split()[:6]) for d in make_documents(64, seed=3)]
    targets = [" ".join(reversed(s.split())) for s in sources]
    split = datasets.Dataset.from_dict({"src": sources, "tgt": targets})
    objective = Seq2Seq(tok, (0, 1), ("src", "tgt"), 24, source_prefix="reverse: ")
    encoded = objective.encode(split, seq_len=8)
    assert all(row[-1] == 1 and len(row) <= 8 for row in encoded.rows["input_ids"])
    assert encoded.n_truncated > 0  # prefix + 6 words exceed 8 tokens
    examples = objective.batch(objective.encode(split, seq_len=32))
    batch = objective.prepare({k: v[:4] for k, v in examples.items()}, torch.Generator())
    longest_target = int((examples["labels"][:4] != -100).sum(1).max())
    assert batch["labels"].shape[1] == longest_target
    assert int(objective.count(batch)["seq2seq"]) == int((batch["labels"] != -100).sum())
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(TINY, vocab_size=tok.get_vocab_size()), ("lm",))
    losses = _train(model, objective, examples, steps=60)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 / 2


def test_denoising_rebuilds_the_block_and_learns(tok, tmp_path):
    size = tok.get_vocab_size()
    docs = [tok.encode(d, add_special_tokens=False).ids for d in make_documents(300, seed=4)]
    dot = tok.token_to_id(".")
    objective = Denoising((0, 1, size - 1), {dot})
    examples = _windows(objective, docs, tmp_path)
    assert examples["input_ids"].shape[1] == 31
    batch = objective.prepare(examples, torch.Generator().manual_seed(0))
    # the target is the block itself plus EOS; the input lost 30% in spans, one mask each
    assert torch.equal(batch["labels"][:, :-1], examples["input_ids"])
    assert batch["labels"].shape[1] == 32 and batch["input_ids"].shape[1] <= 32
    masks = (batch["input_ids"] == size - 1).sum(1)
    assert bool((masks >= 1).all())
    kept = batch["attention_mask"].sum(1) - masks - 1  # minus the masks and the EOS
    assert bool((kept == 31 - round(31 * 0.3)).all())
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(TINY, vocab_size=size), ("lm",))
    losses = _train(model, objective, examples, steps=40)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0
