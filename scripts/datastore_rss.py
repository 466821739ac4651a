"""Peak memory of pretraining against corpus size (issue 20): resident memory must not grow
with the corpus once it is a prepared token store.

For each target size, writes a corpus of real text (the shared corpus folder, repeated with
its documents shuffled) under --work (never in the repository), then runs the real CLI in
subprocesses: `llmtune prepare` and `llmtune pretrain` (20 steps), for GPT and BERT, and
prints per run the peak resident set size two ways: the kernel's own peak of the main
process (ru_maxrss from wait4, what /usr/bin/time -v reports) and, sampled every 50 ms over
the whole process tree, the peak of resident memory and of its anonymous part (heap: what
cannot be reclaimed; the rest is file pages of memory maps the kernel can drop).

  python scripts/datastore_rss.py --sizes 5e6,2e8 --work /tmp/datastore-rss
  # the issue's own case: the Wikipedia sample alone, once and 40 times, GPT only
  python scripts/datastore_rss.py --base wiki --copies 1,40 --models gpt
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("LLMTUNE_REAL_DATA", REPO.parent / "shared" / "data")) / "corpus"
CHARS_PER_TOKEN = 4.1  # measured for these files with an 8k BPE; sizes the repetition
MiB = 1 << 20
COMMON = [
    "data=files",
    "tokenizer.train_docs=20000",  # the same tokenizer budget at every corpus size
    "train.max_steps=20",
    "train.eval_every=20",
    "train.save_every=20",
    "train.log_every=10",
    "hardware=cpu",
    "checkpoint.resume=never",
]
MODELS = {"gpt": ["model=gpt-tiny"], "bert": ["model=bert-tiny"]}


def base_documents(base: str = "all") -> list[str]:
    """The real text: Wikipedia articles, Python docs, fortunes, Shakespeare in ~4 KB pieces
    ("all"), or the Wikipedia articles alone ("wiki", the issue's 3 MB)."""
    docs = []
    if base == "wiki":
        with open(DATA / "wiki_articles.jsonl") as f:
            return [t for t in (json.loads(line)["text"] for line in f) if t.strip()]
    for name in ("wiki_articles.jsonl", "python_docs.jsonl", "fortunes.jsonl"):
        with open(DATA / name) as f:
            docs += [json.loads(line)["text"] for line in f]
    piece: list[str] = []
    for para in re.split(r"\n\s*\n", (DATA / "shakespeare_gutenberg.txt").read_text()):
        piece.append(para)
        if sum(len(p) for p in piece) > 4000:
            docs.append("\n\n".join(piece))
            piece = []
    return [d for d in docs if d.strip()]


def write_corpus(path: Path, tokens: float, base: str = "all", copies: int = 0) -> int:
    """Repeat the base documents, each repetition shuffled, `copies` times or until ~`tokens`;
    returns bytes."""
    if path.is_file():
        return path.stat().st_size
    docs = base_documents(base)
    per_copy = sum(len(d) for d in docs) / CHARS_PER_TOKEN
    copies = copies or max(1, round(tokens / per_copy))
    rng = random.Random(0)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        for _ in range(copies):
            rng.shuffle(docs)
            for doc in docs:
                f.write(json.dumps({"text": doc}) + "\n")
    tmp.replace(path)
    return path.stat().st_size


def _tree(pid: int) -> list[int]:
    """pid and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _rss(pid: int) -> tuple[int, int]:
    """(resident, anonymous resident) bytes of one process."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0, 0
    fields = dict(re.findall(r"^(VmRSS|RssAnon):\s+(\d+) kB", status, re.M))
    return int(fields.get("VmRSS", 0)) * 1024, int(fields.get("RssAnon", 0)) * 1024


def measured_run(args: list[str], env: dict[str, str], checkout: Path | None = None) -> dict:
    """Run `llmtune <args>` (another checkout's, with its .venv, when given); its wall time,
    ru_maxrss, sampled tree peaks and its output."""
    started = time.perf_counter()
    python = str(checkout / ".venv" / "bin" / "python") if checkout else sys.executable
    proc = subprocess.Popen(
        [python, "-m", "llmtune", *args],
        cwd=checkout or REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    peak = {"tree": 0, "tree_anon": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            sizes = [_rss(p) for p in _tree(proc.pid)]
            peak["tree"] = max(peak["tree"], sum(s[0] for s in sizes))
            peak["tree_anon"] = max(peak["tree_anon"], sum(s[1] for s in sizes))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    sampler.join()
    if status != 0:
        sys.exit(f"llmtune {' '.join(args)} failed:\n{output[-3000:]}")
    return {
        "seconds": time.perf_counter() - started,
        "maxrss": usage.ru_maxrss * 1024,
        **peak,
        "output": output,
    }


def store_stats(output: str) -> dict:
    """documents, tokens, MiB and tokens/s of the train store from `llmtune prepare`'s table."""
    for line in output.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line) if c.strip()]
        if cells and cells[0] == "train" and len(cells) >= 6:
            num = [float(c.replace(",", "")) if c != "-" else 0.0 for c in cells[1:6]]
            return dict(zip(("documents", "tokens", "mib", "bytes_per_token", "tok_s"), num))
    return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5e6,2e8", help="corpus sizes in tokens")
    parser.add_argument("--work", default="/tmp/datastore-rss", help="corpora and caches")
    parser.add_argument("--models", default="gpt,bert")
    parser.add_argument("--base", choices=("all", "wiki"), default="all", help="text repeated")
    parser.add_argument("--copies", default="", help="repetitions of the text (not --sizes)")
    parser.add_argument(
        "--baseline", type=Path, help="also run pretrain from this checkout (e.g. before the store)"
    )
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    if args.copies:
        cases = [(f"{args.base}-x{c}", 0.0, int(c)) for c in args.copies.split(",")]
    else:
        cases = [(f"{args.base}-{float(s):.0e}", float(s), 0) for s in args.sizes.split(",")]
    for name, size, copies in cases:
        corpus = work / f"corpus-{name}.jsonl"
        text_bytes = write_corpus(corpus, size, args.base, copies)
        env = {**os.environ, "LLMTUNE_CACHE": str(work / f"cache-{name}"), "COLUMNS": "200"}
        for model in args.models.split(","):
            common = [*MODELS[model], f"data.train={corpus}", *COMMON]
            prep = measured_run(["prepare", *common], env)
            run_dir = work / f"run-{model}-{name}"
            train = measured_run(["pretrain", *common, f"hydra.run.dir={run_dir}"], env)
            waits = [
                json.loads(x).get("data_wait_share")
                for x in (run_dir / "metrics.jsonl").read_text().splitlines()
            ]
            row = {
                "model": model,
                "corpus": name,
                "text_mib": text_bytes / MiB,
                **store_stats(prep["output"]),
                "prepare_s": prep["seconds"],
                "prepare_maxrss": prep["maxrss"] / MiB,
                "prepare_tree_anon": prep["tree_anon"] / MiB,
                "pretrain_maxrss": train["maxrss"] / MiB,
                "pretrain_tree": train["tree"] / MiB,
                "pretrain_tree_anon": train["tree_anon"] / MiB,
                "data_wait_share": max(w for w in waits if w is not None),
                # the pretrain found both stores prepare built: it tokenized nothing
                "reused": train["output"].count("tokens reused from the token store") == 2
                and "tokenized into" not in train["output"],
            }
            if args.baseline:
                base_env = {**env, "LLMTUNE_CACHE": str(work / f"cache-baseline-{name}")}
                base_dir = work / f"run-baseline-{model}-{name}"
                base = measured_run(
                    ["pretrain", *common, f"hydra.run.dir={base_dir}"], base_env, args.baseline
                )
                row["baseline_pretrain_maxrss"] = base["maxrss"] / MiB
            print(json.dumps(row), flush=True)
            rows.append(row)
    print()
    print(
        "| model | corpus | text MiB | tokens | prepare s | prepare tokens/s | bytes/token on "
        "disk | prepare peak RSS MiB (anon) | pretrain peak RSS MiB (tree, anon) | baseline "
        "pretrain peak RSS MiB | data wait | store reused |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        base = r.get("baseline_pretrain_maxrss")
        print(
            f"| {r['model']} | {r['corpus']} | {r['text_mib']:,.0f} | {r.get('tokens', 0):,.0f} "
            f"| {r['prepare_s']:,.0f} | {r.get('tok_s', 0):,.0f} | "
            f"{r.get('bytes_per_token', 0):.2f} | "
            f"{r['prepare_maxrss']:,.0f} ({r['prepare_tree_anon']:,.0f}) | "
            f"{r['pretrain_maxrss']:,.0f} ({r['pretrain_tree']:,.0f}, "
            f"{r['pretrain_tree_anon']:,.0f}) | {f'{base:,.0f}' if base else '-'} | "
            f"{r['data_wait_share']:.4f} | {'yes' if r['reused'] else 'NO'} |"
        )


if __name__ == "__main__":
    main()
