"""Benchmark `llmtune serve`: requests/s and p50/p95 latency of short completions from a small
GPT on loopback, several concurrent clients, with cross-request batching on and off.

    python scripts/bench_serve.py --requests 100 --clients 4 --max-tokens 16 --rounds 2

Without --ckpt a gpt-mini (6 x 256) is pretrained here for --pretrain-steps steps on the
built-in corpus (a few minutes on 2 cores; the weights' quality does not change the timing).
Two servers run at once, `serve.batch_size=8` (batched) and `serve.batch_size=1` (one prompt per
generate call); rounds alternate between them so machine noise hits both alike. Every request
is greedy with a fixed max_tokens and no EOS stop effect on the count (`stop_at_eos` still
applies, so completions may end early; the table counts the tokens really generated).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROMPTS = (
    "The old stone bridge",
    "Once upon a time",
    "In the morning the city",
    "A quiet garden",
    "The river runs",
)


def pretrain(run_dir: Path, steps: int) -> Path:
    subprocess.run(
        [sys.executable, "-m", "llmtune", "pretrain", "model=gpt-mini", "hardware=cpu",
         f"train.max_steps={steps}", f"train.eval_every={steps}", f"train.save_every={steps}",
         "train.global_batch_size=8", "train.micro_batch_size=8", f"hydra.run.dir={run_dir}"],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return run_dir


def start(ckpt: Path, batch_size: int, run_dir: Path) -> tuple[subprocess.Popen, int]:
    command = [
        sys.executable, "-m", "llmtune", "serve", f"ckpt={ckpt}", "serve.port=0",
        f"serve.batch_size={batch_size}", "hardware=cpu", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    for raw in proc.stdout:
        line = raw.decode()
        if " on http://" in line:
            return proc, int(line.rsplit(":", 1)[1])
    raise SystemExit(f"server did not start (exit {proc.wait()})")


def complete(port: int, prompt: str, max_tokens: int) -> tuple[float, int]:
    """(seconds, completion tokens) of one request."""
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    reply = json.loads(response.read())
    conn.close()
    if response.status != 200:
        raise SystemExit(f"request failed: {response.status} {reply}")
    return time.perf_counter() - start, reply["usage"]["completion_tokens"]


def load(port: int, n: int, clients: int, max_tokens: int) -> dict[str, float]:
    """n requests from `clients` concurrent clients: requests/s, latency percentiles."""
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
        results = list(pool.map(lambda p: complete(port, p, max_tokens), prompts))
    wall = time.perf_counter() - start
    latencies = sorted(s for s, _ in results)
    return {
        "requests_per_s": n / wall,
        "p50_ms": 1e3 * statistics.median(latencies),
        "p95_ms": 1e3 * latencies[min(n - 1, round(0.95 * (n - 1)))],
        "tokens_per_s": sum(t for _, t in results) / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", default="", help="a GPT checkpoint (default: pretrain one)")
    parser.add_argument("--pretrain-steps", type=int, default=5)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ckpt = Path(args.ckpt) if args.ckpt else pretrain(root / "gpt", args.pretrain_steps)
        arms = {"batched (batch_size 8)": 8, "unbatched (batch_size 1)": 1}
        servers = {name: start(ckpt, size, root / f"serve{size}") for name, size in arms.items()}
        rows: dict[str, list[dict]] = {name: [] for name in arms}
        try:
            for _proc, port in servers.values():  # warm-up: first calls allocate
                load(port, args.clients, args.clients, args.max_tokens)
            for _ in range(args.rounds):
                for name, (_, port) in servers.items():
                    rows[name].append(load(port, args.requests, args.clients, args.max_tokens))
        finally:
            for proc, _ in servers.values():
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=60)
    print(
        f"{args.requests} completions of max {args.max_tokens} tokens, {args.clients} clients, "
        f"median of {args.rounds} interleaved rounds"
    )
    print(f"{'arm':<26}{'req/s':>8}{'p50 ms':>9}{'p95 ms':>9}{'tok/s':>9}")
    med = {n: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for n, rs in rows.items()}
    for name, m in med.items():
        print(
            f"{name:<26}{m['requests_per_s']:>8.1f}{m['p50_ms']:>9.0f}{m['p95_ms']:>9.0f}"
            f"{m['tokens_per_s']:>9.0f}"
        )
    batched, single = med.values()
    ratio = batched["requests_per_s"] / single["requests_per_s"]
    print(f"ratio batched / unbatched requests/s: {ratio:.2f}x")


if __name__ == "__main__":
    main()
