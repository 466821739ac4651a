"""What every scripts/bench_*_vs_hf.py shares: each arm in its own child process (so peak RSS
is its own), arms interleaved A B A B in one run, step clocks for llmtune and the HF Trainer,
real-token counting, profiles, and the printed table. Not a benchmark itself."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
THREADS = 2


def real_data() -> Path:
    """The shared real-data folder: $LLMTUNE_REAL_DATA, else ../shared/data beside the repo."""
    return Path(os.environ.get("LLMTUNE_REAL_DATA", REPO.parent / "shared" / "data"))


def required_real_data() -> Path:
    """real_data(), or one line and exit when the folder is missing (a workload reads it)."""
    root = real_data()
    if not root.is_dir():
        raise SystemExit(
            f"bench: no real data at {root}; set LLMTUNE_REAL_DATA to the shared data folder"
        )
    return root


def peak_rss_mib() -> float:
    """This process's peak resident set size (VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextlib.contextmanager
def maybe_profiled(enabled: bool, result: dict) -> Iterator[None]:
    """When enabled, put the ops taking the most CPU time in result['profile']."""
    if not enabled:
        yield
        return
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        yield
    result["profile"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18)


# ---- parent side ------------------------------------------------------------------------------
def run_child(script: str, child_args: list[str], scratch: Path, quiet: bool) -> dict:
    """Run `python script --child ... --out <file>` with THREADS threads; return its JSON.

    Every child's temporary folders (run folders, the Trainer's output_dir) land in `scratch`,
    so they go when the bench ends; the llmtune cache (tokenizers, token ids, the CPU peak)
    is shared by all children unless LLMTUNE_CACHE is set.
    """
    out = Path(tempfile.mkdtemp(prefix="result-", dir=scratch)) / "result.json"
    cmd = [sys.executable, script, *child_args, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "TOKENIZERS_PARALLELISM": "false"}
    env.setdefault("LLMTUNE_CACHE", str(scratch / "cache"))
    env.update(TMPDIR=str(scratch), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL if quiet else None)
    if done.returncode:  # the child's own error is on stderr, above
        raise SystemExit(f"bench: the {child_args[1]} run exited {done.returncode} (see above)")
    return json.loads(out.read_text())


def interleaved(arms: list[str], rounds: int, run_arm: Callable[[str], dict]) -> dict:
    """{arm: [result per round]}, running the arms A B A B so load drifts hit both alike."""
    results: dict[str, list[dict]] = {arm: [] for arm in arms}
    for _ in range(rounds):
        for arm in arms:
            results[arm].append(run_arm(arm))
    return results


def finish_child(out: Path, result: dict) -> None:
    """Write a child's result with its peak RSS (called last in the child)."""
    result["peak_rss_mib"] = peak_rss_mib()
    out.write_text(json.dumps(result))


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """rows as a table; columns are (header, key, format spec); a missing number prints n/a,
    a missing text nothing."""
    cells = [
        [("" if not spec else "n/a") if r.get(key) is None else format(r[key], spec) for r in rows]
        for _, key, spec in columns
    ]
    widths = [max([len(h), *map(len, col)]) for (h, _, _), col in zip(columns, cells)]
    print("  ".join(h.rjust(w) for (h, _, _), w in zip(columns, widths)))
    print("-" * (sum(widths) + 2 * (len(widths) - 1)))
    for i in range(len(rows)):
        print("  ".join(col[i].rjust(w) for col, w in zip(cells, widths)))


# ---- step clocks --------------------------------------------------------------------------------
def llmtune_steps(run_dir: Path, warmup: int) -> dict:
    """Per-step seconds and real tokens of a run logged with train.log_every=1, after warm-up,
    read back from metrics.jsonl (a step's seconds = its tokens / its tokens_per_s)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "tokens_per_s" in r]
    seconds, tokens, prev = [], [], 0
    for r in rows:
        tokens.append(r["tokens"] - prev)
        seconds.append(tokens[-1] / r["tokens_per_s"])
        prev = r["tokens"]
    measured = rows[warmup:]
    return {
        "step_s": seconds[warmup:],
        "step_tokens": tokens[warmup:],
        "mfu": _median_or_none([r["mfu"] for r in measured if r.get("mfu") is not None]),
        "tflops": statistics.median(r["tflops_per_s"] for r in measured),
        "data_wait": statistics.median(r["data_wait_share"] for r in measured),
    }


def _median_or_none(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def trainer_clock(marks: list[float]):
    """A Trainer callback appending perf_counter() at train begin and after every step."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_train_begin(self, *args, **kwargs):
            marks.append(time.perf_counter())

        def on_step_end(self, *args, **kwargs):
            marks.append(time.perf_counter())

    return Clock()


def counting(collate: Callable[[list], dict], counts: list[int]) -> Callable[[list], dict]:
    """`collate` that also appends each batch's real tokens (attention_mask ones, or every
    token of a padding-free batch) to `counts`: one entry per training step."""

    def run(features: list) -> dict:
        batch = collate(features)
        mask = batch.get("attention_mask")
        counts.append(int(mask.sum()) if mask is not None else int(batch["input_ids"].numel()))
        return batch

    return run


def trainer_steps(marks: list[float], counts: list[int], warmup: int) -> dict:
    """Per-step seconds and real tokens of a Trainer run, after warm-up."""
    step_s = [b - a for a, b in zip(marks, marks[1:])]
    return {"step_s": step_s[warmup:], "step_tokens": counts[: len(step_s)][warmup:]}


def throughput(runs: list[dict], batch: int) -> dict:
    """Median examples/s (batch / median step) and real tokens/s (sum tokens / sum time) over
    every measured step of every round, and the peak RSS of the largest round."""
    steps = [s for r in runs for s in r["step_s"]]
    tokens = sum(t for r in runs for t in r["step_tokens"])
    return {
        "examples_s": batch / statistics.median(steps),
        "tokens_s": tokens / sum(steps),
        "rss_mib": max(r["peak_rss_mib"] for r in runs),
    }
