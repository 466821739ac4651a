"""data=hub data.streaming=true, offline through a local folder read by the same streaming
path: chunks tokenized on the fly, rank shards, held-out documents, exact resume."""

import itertools
import json
import re

import pytest
import torch

from llmtune.config.schema import (
    HubData,
    ModelConfig,
    RunConfig,
    TokenizerConfig,
    TrainConfig,
)
from llmtune.data import streaming
from llmtune.data.packing import pack_documents
from llmtune.data.pipeline import lm_examples, prepare_data


@pytest.fixture
def stream_config(tmp_path, monkeypatch):
    """Three files of numbered documents ("doc 17 ..." says where it came from)."""
    folder = tmp_path / "hub"
    folder.mkdir()
    for f in range(3):
        rows = [{"text": f"doc {f * 100 + i} " + "words follow here " * 4} for i in range(90)]
        (folder / f"train-{f}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(streaming, "CHUNK_DOCS", 25)  # many chunks, and epochs, in a test
    data = HubData(name=str(folder), streaming=True, validation_fraction=0.1)
    tok = TokenizerConfig(kind="bpe", vocab_size=300, min_frequency=1, train_docs=50)
    train = TrainConfig(micro_batch_size=4, eval_batches=2)
    return RunConfig(
        model=ModelConfig(family="gpt", max_seq_len=8), tokenizer=tok, data=data, train=train
    )


def _examples(config):
    prepared = prepare_data(config)
    eos = prepared.tokenizer.token_to_id("<|endoftext|>")
    return prepared, lm_examples(lambda s: pack_documents(s, 8, eos), prepared, config)


def _docs_of(batches, tok) -> set[int]:
    """The document numbers a stream of batches read (where a window holds "doc N words")."""
    rows = [row for b in batches for row in b["input_ids"].tolist()]
    return {int(n) for row in rows for n in re.findall(r"doc (\d+) words", tok.decode(row))}


def test_a_stream_trains_from_chunks_and_resumes_exactly(stream_config):
    prepared, examples = _examples(stream_config)
    assert not prepared.stores  # nothing is written to disk
    straight = list(itertools.islice(examples["train"].train_batches(stream_config, (0, 1)), 90))
    assert all(b["input_ids"].shape == (4, 8) for b in straight)
    for stop in (7, 31, 64):  # inside a chunk, and past an epoch of the stream
        first = examples["train"].train_batches(stream_config, (0, 1))
        head = list(itertools.islice(first, stop))
        state = json.loads(json.dumps(first.state_dict()))  # as train_state.pt keeps it
        resumed = examples["train"].train_batches(stream_config, (0, 1))
        resumed.load_state_dict(state)
        rest = list(itertools.islice(resumed, 90 - stop))
        for a, b in zip(straight, head + rest, strict=True):
            assert torch.equal(a["input_ids"], b["input_ids"])


def test_ranks_read_their_own_documents_and_none_held_out(stream_config):
    prepared, examples = _examples(stream_config)
    tok = prepared.tokenizer
    seen = [
        _docs_of(itertools.islice(examples["train"].train_batches(stream_config, (r, 2)), 40), tok)
        for r in range(2)
    ]
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    held = _docs_of([examples["validation"].rows(torch.arange(len(examples["validation"])))], tok)
    assert held and not held & (seen[0] | seen[1])
    assert len(examples["validation"]) == 2 * 4  # eval_batches x micro_batch_size
