"""sft with data.packing=true: the same examples packed or not give the same summed loss and
the same target count on GPT and Llama (attention and positions stay inside each example, no
target crosses into the next one)."""

from __future__ import annotations

import json
import random

import pytest
import torch
from tokenizers import Tokenizer

from llmtune.config.schema import FilesData
from llmtune.data import tokenizer_info, train_tokenizer
from llmtune.data.labelled import load_labelled, padded_batch
from llmtune.data.row_packing import pack_encoded
from llmtune.models import build_model
from llmtune.models.registry import model_config
from llmtune.objectives import build_objective
from llmtune.objectives.sft import SFTConfig
from tests.conftest import make_documents

WORDS = ["the", "river", "city", "north", "old", "stone", "window", "walks", "sings", "road"]
SEQ_LEN = 64


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return train_tokenizer(make_documents(40), "bpe", 300, 1, True)


@pytest.fixture(scope="module")
def encoded_task(bpe, tmp_path_factory):
    """(task, encoded rows) of examples of many lengths; some have an empty instruction, so
    their first token is already a response token (a target, were packing careless)."""
    rng = random.Random(3)
    rows = []
    for i in range(24):
        instruction = "" if i % 5 == 0 else " ".join(rng.choices(WORDS, k=rng.randint(1, 6)))
        response = " ".join(rng.choices(WORDS, k=rng.randint(1, 7)))
        rows.append({"instruction": instruction, "response": response})
    path = tmp_path_factory.mktemp("sft") / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = FilesData(source="files", train=str(path), validation=str(path))
    task = build_objective(SFTConfig(prompt_template="{instruction}"), _info(bpe), bpe, data)
    split = load_labelled(data, task.columns(data), 0)["validation"]
    return task, task.encode(split, SEQ_LEN)


def _info(bpe):
    return tokenizer_info(bpe, "bpe")


def _model(family: str, vocab: int) -> torch.nn.Module:
    torch.manual_seed(0)
    keys = dict(vocab_size=vocab, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=SEQ_LEN)
    config = model_config(family, dropout=0.0, attn_dropout=0.0, **keys)
    return build_model(config, ("lm",)).eval()


def _summed(task, model, batch) -> tuple[float, int]:
    batch = task.prepare(batch, torch.Generator())
    with torch.no_grad():
        loss = task.losses(model, batch)["sft"].loss_sum
    return float(loss), int(task.count(batch)["sft"])


@pytest.mark.parametrize("family", ["gpt", "llama"])
def test_packed_rows_give_the_unpacked_loss_and_count(family, bpe, encoded_task):
    task, encoded = encoded_task
    model = _model(family, bpe.get_vocab_size())
    pad = _info(bpe).pad_id
    loss, count = _summed(task, model, padded_batch(encoded, pad))
    packed_encoded, stats = pack_encoded(encoded, SEQ_LEN, seed=0)
    packed = task.batch(packed_encoded)
    assert stats.rows < stats.examples // 2  # several examples really share rows
    assert packed["doc_ids"].amax(1).max() >= 2
    packed_loss, packed_count = _summed(task, model, packed)
    assert packed_count == count
    assert packed_loss == pytest.approx(loss, rel=1e-5)
    # the document ids are what keeps them equal: without them examples see each other
    blind = {k: v for k, v in packed.items() if k != "doc_ids"}
    assert _summed(task, model, blind)[0] != pytest.approx(loss, rel=1e-5)


def test_pad_positions_join_the_last_example(bpe, encoded_task):
    task, encoded = encoded_task
    packed, _ = pack_encoded(encoded, SEQ_LEN, seed=0)
    batch = task.batch(packed)
    real = batch["attention_mask"].bool()
    last = batch["doc_ids"].masked_fill(~real, -1).amax(1, keepdim=True)
    assert bool((batch["doc_ids"][~real] == last.expand_as(real)[~real]).all())


@pytest.mark.gpu
def test_packed_rows_give_the_unpacked_loss_on_cuda_in_bf16(bpe, encoded_task):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    task, encoded = encoded_task
    model = _model("llama", bpe.get_vocab_size()).cuda()
    packed, _ = pack_encoded(encoded, SEQ_LEN, seed=0)
    batches = [padded_batch(encoded, _info(bpe).pad_id), task.batch(packed)]
    results = []
    for batch in batches:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            results.append(_summed(task, model, {k: v.cuda() for k, v in batch.items()}))
    assert results[0][1] == results[1][1]
    assert results[1][0] == pytest.approx(results[0][0], rel=0.02)
