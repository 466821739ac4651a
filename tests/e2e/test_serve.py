"""`llmtune serve` as a user runs it: the real command in a subprocess on a free loopback
port, OpenAI-style requests (plain, streamed, chat, concurrent), bad requests that must get
a 4xx and leave the server serving, and a clean stop on Ctrl-C."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from llmtune.config.schema import EvaluateConfig
from llmtune.loading import load_checkpoint
from llmtune.models.generation import generate
from tests.conftest import make_documents
from tests.e2e.helpers import TINY_GPT, pretrain, write_jsonl

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def request(port: int, method: str, path: str, body: bytes | dict | None = None) -> tuple:
    """(status, parsed JSON or raw text) of one HTTP request to the server."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    raw = response.read().decode()
    conn.close()
    kind = response.getheader("content-type", "")
    return response.status, json.loads(raw) if kind.startswith("application/json") else raw


def events(raw: str) -> list:
    """The data of each server-sent event ('[DONE]' kept as a string)."""
    out = []
    for line in raw.split("\n"):
        if line.startswith("data: "):
            data = line[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


@pytest.fixture(scope="module")
def gpt_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serve")
    corpus = write_jsonl(root / "corpus.jsonl", [{"text": d} for d in make_documents(80)])
    pretrain(root / "gpt", corpus, *TINY_GPT, "train.max_steps=6", "train.eval_every=6")
    return root / "gpt"


@pytest.fixture(scope="module")
def server(gpt_ckpt: Path, tmp_path_factory: pytest.TempPathFactory):
    """`python -m llmtune serve` on a free port; yields (port, process); Ctrl-C at the end."""
    run_dir = tmp_path_factory.mktemp("serve-run")
    command = [
        sys.executable, "-m", "llmtune", "serve", f"ckpt={gpt_ckpt}", "serve.port=0",
        "serve.max_tokens=20", "serve.max_body_bytes=20000", "serve.batch_wait_ms=300",
        "hardware=cpu", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    lines: list[str] = []
    port = None
    deadline = time.monotonic() + 120
    while port is None and time.monotonic() < deadline:
        line = proc.stdout.readline().decode()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        if " on http://127.0.0.1:" in line:
            port = int(line.rsplit(":", 1)[1])
    if port is None:
        proc.kill()
        pytest.fail("server did not start:\n" + "".join(lines))
    # keep reading its output, so a full pipe never blocks the server
    threading.Thread(
        target=lambda: lines.extend(x.decode() for x in proc.stdout), daemon=True
    ).start()
    yield port, proc, lines
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)


def test_completions_equal_generate_and_stream_the_same_text(server, gpt_ckpt: Path):
    port, _, _ = server
    status, health = request(port, "GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["family"] == "gpt"
    assert "/v1/completions" in health["endpoints"] and "/v1/embeddings" not in health["endpoints"]
    prompts = ["The river", "A quiet garden"]
    body = {"prompt": prompts, "max_tokens": 6, "temperature": 0}
    status, reply = request(port, "POST", "/v1/completions", body)
    assert status == 200, reply
    assert reply["object"] == "text_completion" and len(reply["choices"]) == 2
    # the same tokens as llmtune's own greedy generation
    loaded = load_checkpoint(gpt_ckpt, torch.device("cpu"))
    ids = [loaded.tokenizer.encode(p, add_special_tokens=False).ids for p in prompts]
    outs = generate(loaded.model, ids, EvaluateConfig(max_new_tokens=6), loaded.info.eos_id)
    eos = loaded.info.eos_id
    expected = [loaded.tokenizer.decode([t for t in o.token_ids if t != eos]) for o in outs]
    assert [c["text"] for c in reply["choices"]] == expected
    assert reply["usage"]["prompt_tokens"] == sum(len(i) for i in ids)
    assert reply["usage"]["completion_tokens"] == sum(len(o.token_ids) for o in outs)
    # streamed: text pieces that add up to the same completion, then [DONE]
    status, raw = request(
        port, "POST", "/v1/completions", {**body, "prompt": prompts[0], "stream": True}
    )
    assert status == 200
    chunks = events(raw)
    assert chunks[-1] == "[DONE]" and len(chunks) >= 3
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == expected[0]
    assert chunks[-2]["choices"][0]["finish_reason"] in ("length", "stop")


def test_chat_streams_deltas(server):
    port, _, _ = server
    body = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, "temperature": 0}
    status, reply = request(port, "POST", "/v1/chat/completions", body)
    assert status == 200 and reply["object"] == "chat.completion"
    text = reply["choices"][0]["message"]["content"]
    status, raw = request(port, "POST", "/v1/chat/completions", {**body, "stream": True})
    chunks = events(raw)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1] == "[DONE]"
    deltas = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
    assert deltas == text


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b'{"prompt": "The river", "max_tokens": ', 400, "malformed JSON"),
        (json.dumps({"prompt": "x" * 30000}).encode(), 413, "max_body_bytes=20000"),
        ({"max_tokens": 3}, 400, "prompt: Field required"),
        ({"prompt": "x", "max_tokens": 21}, 400, "serve.max_tokens=20"),
        ({"prompt": "x", "max_tokens": "3"}, 400, "max_tokens"),
        ({"prompt": "x", "logprobs": 2}, 400, "logprobs: not a field"),
        ({"prompt": []}, 400, "empty list"),
        ({"prompt": "word " * 100}, 400, "this model reads at most 32"),
        (b"[1, 2]", 400, "body"),
    ],
    ids=["malformed", "oversized", "missing", "cap", "type", "unknown", "empty", "long", "array"],
)
def test_bad_requests_get_4xx_and_the_server_keeps_serving(server, body, status, says):
    port, proc, _ = server
    got, reply = request(port, "POST", "/v1/completions", body)
    assert got == status, reply
    assert says in reply["error"]["message"]
    assert proc.poll() is None
    assert request(port, "POST", "/v1/completions", {"prompt": "The", "max_tokens": 2})[0] == 200


def test_wrong_route_and_capability(server):
    port, _, _ = server
    status, reply = request(port, "POST", "/v1/embeddings", {"input": "text"})
    assert status == 400 and "serves no embeddings" in reply["error"]["message"]
    status, reply = request(port, "GET", "/v1/nothing")
    assert status == 404 and "/v1/nothing" in reply["error"]["message"]


def test_four_concurrent_requests_are_answered_and_batched(server):
    port, _, _ = server
    before = request(port, "GET", "/health")[1]
    body = {"prompt": "The river", "max_tokens": 5, "temperature": 0}
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda _: request(port, "POST", "/v1/completions", body), range(4)))
    assert [s for s, _ in replies] == [200] * 4
    assert len({r["choices"][0]["text"] for _, r in replies}) == 1  # greedy: same text
    after = request(port, "GET", "/health")[1]
    assert after["prompts_generated"] - before["prompts_generated"] == 4
    # batch_wait_ms=300: the four requests share fewer than four generate calls
    assert after["generation_batches"] - before["generation_batches"] < 4


def test_ctrl_c_stops_the_server(server):
    port, proc, lines = server
    assert request(port, "GET", "/health")[0] == 200
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0, "".join(lines)
