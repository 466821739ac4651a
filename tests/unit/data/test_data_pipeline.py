"""The data path end to end: stores built once and reused, found by later runs and ranks,
where data.store_dir says; mixtures; one builder among several processes."""

import json
import os

import pytest
import torch

from llmtune.config.schema import (
    DataConfig,
    FilesData,
    MixData,
    MixSourceConfig,
    ModelConfig,
    RunConfig,
    TokenizerConfig,
)
from llmtune.data import pipeline
from llmtune.data.packing import pack_documents
from llmtune.data.pipeline import lm_examples, prepare_data
from llmtune.data.rows import MixedRows
from llmtune.errors import DataError

WORDS = [
    "the",
    "river",
    "city",
    "model",
    "data",
    "light",
    "stone",
    "garden",
    "music",
    "paper",
    "window",
    "road",
]


def _corpus(path, n: int = 60, offset: int = 0):
    docs = [" ".join(WORDS[(i + j + offset) % len(WORDS)] for j in range(30)) for i in range(n)]
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return str(path)


def _config(data: DataConfig, **tokenizer) -> RunConfig:
    tok = TokenizerConfig(**{"kind": "bpe", "vocab_size": 300, "min_frequency": 1, **tokenizer})
    return RunConfig(model=ModelConfig(family="gpt", max_seq_len=16), tokenizer=tok, data=data)


@pytest.fixture
def encodes(monkeypatch):
    """How often a split is tokenized."""
    calls = []
    real = pipeline.encode_all

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "encode_all", counting)
    return calls


def _windows(prepared, config):
    make = lambda store: pack_documents(store, 16, prepared.tokenizer.token_to_id("<|endoftext|>"))  # noqa: E731
    return lm_examples(make, prepared, config)


def test_stores_are_built_once_then_found(tmp_path, encodes):
    config = _config(FilesData(train=_corpus(tmp_path / "c.jsonl")))
    first = prepare_data(config)
    assert [(u.split, u.built) for u in first.stores] == [("train", True), ("validation", True)]
    assert len(encodes) == 2
    again = prepare_data(config)
    assert [u.built for u in again.stores] == [False, False] and len(encodes) == 2
    assert [u.store.path for u in again.stores] == [u.store.path for u in first.stores]
    examples = _windows(again, config)
    assert len(examples["train"]) > 10 and len(examples["validation"]) >= 1
    other = _config(config.data, vocab_size=320)  # another tokenizer: other stores
    assert prepare_data(other).stores[0].store.path != first.stores[0].store.path


def test_store_dir_and_a_missing_store(tmp_path):
    data = FilesData(train=_corpus(tmp_path / "c.jsonl"))
    data = FilesData(**{**vars(data), "store_dir": str(tmp_path / "stores")})
    with pytest.raises(DataError, match="not prepared at .*; run `llmtune prepare` first"):
        prepare_data(_config(data), build=False)
    prepared = prepare_data(_config(data))
    assert all(u.store.path.parent == tmp_path / "stores" for u in prepared.stores)


def test_a_damaged_store_is_said_once_and_rebuilt_where_building_is_allowed(
    tmp_path, encodes, capsys
):
    # before: the run stopped ("delete the folder and prepare again")
    config = _config(FilesData(train=_corpus(tmp_path / "c.jsonl")))
    first = prepare_data(config)
    store = first.stores[0].store
    offsets = store.path / "offsets-00000.npy"
    good = offsets.read_bytes()
    offsets.write_bytes(good[:-8])
    with pytest.raises(DataError, match=r"is damaged \(cannot read offsets-00000.npy") as info:
        prepare_data(config, build=False)  # a waiting rank never rebuilds: one line
    assert "\n" not in str(info.value)
    assert offsets.read_bytes() != good  # and removes nothing
    capsys.readouterr()
    again = prepare_data(config)
    out = capsys.readouterr().out
    assert out.count(f"warning: the token store {store.path} is damaged") == 1
    assert [u.built for u in again.stores] == [True, False] and len(encodes) == 3
    assert offsets.read_bytes() == good  # the same tokens again
    assert [p.name for p in store.path.parent.iterdir() if p.name.startswith(".")] == []


def test_a_mix_gives_one_store_per_corpus_and_split(tmp_path):
    mix = {
        "a": MixSourceConfig(train=_corpus(tmp_path / "a.jsonl", 40), weight=1.0),
        "b": MixSourceConfig(train=_corpus(tmp_path / "b.jsonl", 80, offset=3), weight=3.0),
    }
    config = _config(MixData(mix=mix))
    prepared = prepare_data(config)
    assert [(u.split, u.corpus, u.weight) for u in prepared.stores] == [
        ("train", "a", 1.0),
        ("validation", "a", 1.0),
        ("train", "b", 3.0),
        ("validation", "b", 3.0),
    ]
    examples = _windows(prepared, config)
    assert isinstance(examples["train"], MixedRows)
    sizes = [len(p) for p in examples["train"].parts]
    assert len(examples["train"]) == sum(sizes)
    assert abs(examples["train"].quota[1] - sum(sizes) * 3 / 4) <= 0.5


@pytest.mark.slow
def test_two_tokenizing_processes_write_the_same_store(tmp_path):
    path = _corpus(tmp_path / "c.jsonl", 3000)
    one = prepare_data(_config(FilesData(train=path, cache_dir=str(tmp_path / "1"))))
    two = prepare_data(_config(FilesData(train=path, cache_dir=str(tmp_path / "2"), num_proc=2)))
    for a, b in zip(one.stores, two.stores, strict=True):
        assert a.store.path.name == b.store.path.name  # the same content address
        assert (a.store.n_docs, a.store.n_tokens) == (b.store.n_docs, b.store.n_tokens)
        assert torch.equal(
            torch.from_numpy(a.store.tokens(0, a.store.n_tokens)),
            torch.from_numpy(b.store.tokens(0, b.store.n_tokens)),
        )


def _rank_main(rank: int, world: int, folder: str, port: int) -> None:
    """One of two gloo processes: prepare_once, recording what this rank tokenized."""
    import torch.distributed as dist

    os.environ.update({"LOCAL_RANK": str(rank), "RANK": str(rank)})
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    built = []
    real = pipeline.build_store
    pipeline.build_store = lambda split, *a: built.append(split.name) or real(split, *a)
    data = FilesData(train=f"{folder}/c.jsonl", cache_dir=f"{folder}/cache")
    prepared = pipeline.prepare_once(_config(data))
    paths = [str(u.store.path) for u in prepared.stores]
    with open(f"{folder}/rank{rank}.json", "w") as f:
        json.dump({"built": built, "paths": paths}, f)
    dist.destroy_process_group()


@pytest.mark.slow
def test_under_two_processes_rank_0_builds_and_the_other_waits(tmp_path):
    import socket

    import torch.multiprocessing as mp

    _corpus(tmp_path / "c.jsonl", 400)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_main, args=(2, str(tmp_path), port), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["built"] == ["train", "validation"] and ranks[1]["built"] == []
    assert ranks[0]["paths"] == ranks[1]["paths"]
    manifest = json.loads((tmp_path / ranks[0]["paths"][0] / "manifest.json").read_text())
    assert manifest["built_by"]["rank"] == 0
