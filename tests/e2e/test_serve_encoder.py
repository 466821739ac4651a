"""`llmtune serve` of an encoder: /v1/embeddings equal llmtune's own pooled embeddings and
/v1/classify a seq_cls checkpoint's probabilities; the app runs in a thread on a free port."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
import torch

from llmtune.cli import main
from llmtune.config.schema import ServeConfig
from llmtune.data.labelled import encode_texts, padded_batch
from llmtune.models.pooling import sentence_embedding
from tests.conftest import make_documents
from tests.e2e.helpers import FAST, TINY_BERT, pretrain, write_jsonl
from tests.e2e.test_serve import request

uvicorn = pytest.importorskip("uvicorn")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serve-bert")
    corpus = write_jsonl(root / "corpus.jsonl", [{"text": d} for d in make_documents(60)])
    pretrain(root / "bert", corpus, *TINY_BERT, "train.max_steps=3", "train.eval_every=3")
    rows = [{"text": f"the film was {w}", "label": w} for w in ("great", "awful") * 16]
    train = write_jsonl(root / "train.jsonl", rows)
    main(
        ["finetune", f"hydra.run.dir={root / 'cls'}", f"init_from={root / 'bert'}",
         "objective=seq_cls", "data=files", f"data.train={train}", f"data.validation={train}",
         *FAST, "train.max_steps=3", "train.eval_every=3"]
    )  # fmt: skip
    return root / "cls"


@pytest.fixture(scope="module")
def served(classifier: Path):
    """The app of `classifier` served by uvicorn in a thread: yields (port, Served)."""
    from llmtune.serve import Engine, build_app, load_served

    cfg = ServeConfig(port=0)
    model = load_served(str(classifier), torch.device("cpu"), "")
    engine = Engine(model, cfg, 0)
    engine.start()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(build_app(model, engine, cfg), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        thread.join(0.05)
    yield sock.getsockname()[1], model
    server.should_exit = True
    thread.join(30)
    engine.stop()
    sock.close()


def test_embeddings_equal_llmtunes_pooled_embeddings(served):
    port, model = served
    texts = ["the film was great", "a quiet garden by the old river"]
    status, reply = request(port, "POST", "/v1/embeddings", {"input": texts})
    assert status == 200, reply
    got = torch.tensor([d["embedding"] for d in reply["data"]])
    loaded = model.loaded
    batch = padded_batch(encode_texts(loaded.tokenizer, texts, None, 32), loaded.info.pad_id)
    with torch.no_grad():
        ref = sentence_embedding(
            loaded.model, batch["input_ids"], batch["attention_mask"], "mean",
            batch["token_type_ids"],
        )  # fmt: skip
    torch.testing.assert_close(got, torch.nn.functional.normalize(ref, dim=-1), atol=1e-5, rtol=0)
    assert reply["usage"]["prompt_tokens"] == int(batch["attention_mask"].sum())


def test_classify_gives_every_label_a_probability(served):
    port, _ = served
    status, reply = request(port, "POST", "/v1/classify", {"input": ["great", "awful film"]})
    assert status == 200, reply
    for row in reply["data"]:
        assert set(row["scores"]) == {"awful", "great"}
        assert abs(sum(row["scores"].values()) - 1) < 1e-5
        assert row["label"] == max(row["scores"], key=row["scores"].get)
    status, reply = request(port, "POST", "/v1/classify", {"input": ["a"], "text_pair": ["b", "c"]})
    assert status == 400 and "text_pair" in reply["error"]["message"]


def test_an_encoder_serves_no_completions(served):
    port, _ = served
    status, reply = request(port, "POST", "/v1/completions", {"prompt": "x"})
    assert status == 400 and "serves no completions" in reply["error"]["message"]


def test_a_failing_model_call_is_a_500_and_the_server_goes_on(served, monkeypatch):
    port, model = served

    def broken(texts):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(model, "embed", broken)
    status, reply = request(port, "POST", "/v1/embeddings", {"input": "x"})
    assert status == 500 and "RuntimeError: out of memory" in reply["error"]["message"]
    monkeypatch.undo()
    assert request(port, "POST", "/v1/embeddings", {"input": "x"})[0] == 200
