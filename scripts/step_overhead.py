"""Per-step overhead of llmtune's training loop on a tiny model, against a bare torch loop.

    python scripts/step_overhead.py --steps 60 --rounds 3

One process, one thread. Arms interleave A B B A ...: A is `llmtune pretrain model=bert-tiny`
run in-process; B is a hand-written loop (forward, backward, fused AdamW step, zero_grad) on
the same model (llmtune's builder, same kernels) and batches drawn and masked beforehand.
A's phases are timed by wrapping the functions the loop calls (each wrapper costs about a
microsecond); "other" is the rest of each iteration of the loop. The steps/s ratio of the
arms is what to compare across code versions: absolute times drift on a shared machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from llmtune.cli import main as llmtune_main
from llmtune.data import train_batches
from llmtune.data.loader import BatchIterator
from llmtune.models import build_model
from llmtune.train import loop, streams
from llmtune.train.hardware import prepare_model
from llmtune.train.parallel import Parallel
from llmtune.train.report import Reporter
from llmtune.train.throughput import Throughput

# Phase of each function the loop calls; every one is a leaf (none calls another listed here).
PHASES = {
    "data": ("micro_batch_rngs", "BatchIterator.__next__", "prepare"),
    "forward": ("Parallel.losses",),
    "backward": ("Tensor.backward",),
    "grad norm + clip": ("Parallel.clip_grad_norm",),
    "optimizer step": ("optimizer.step",),
    "zero_grad": ("optimizer.zero_grad",),
    "counts, FLOPs, tokens": ("count", "_total_counts", "Throughput.flops", "input_tokens"),
    "loss/throughput window": ("Throughput.add_step",),
    "lr schedule": ("lr_at",),
    "logging (record, jsonl, console)": ("Trainer._train_record", "Reporter.log"),
    "stop checks": ("Trainer._should_stop",),
}


class Clock:
    """Seconds per wrapped function, and the start time of every loop iteration."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = defaultdict(float)
        self.iterations: list[float] = []  # perf_counter at each _should_stop call
        self.marks: list[dict[str, float]] = []  # `spent` as it stood at each of those

    def wrap(self, name: str, fn: Callable) -> Callable:
        spent = self.spent

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - start

        return timed


@contextlib.contextmanager
def patched(clock: Clock) -> Iterator[list]:
    """Wrap the loop's collaborators with `clock`; yields the list the Trainer lands in."""
    trainers: list = []
    undo: list[tuple[Any, str, Any]] = []

    def patch(owner: Any, attr: str, name: str) -> None:
        original = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
        undo.append((owner, attr, original))
        setattr(owner, attr, clock.wrap(name, getattr(owner, attr)))

    patch(streams, "micro_batch_rngs", "micro_batch_rngs")
    patch(BatchIterator, "__next__", "BatchIterator.__next__")
    patch(Parallel, "losses", "Parallel.losses")
    patch(torch.Tensor, "backward", "Tensor.backward")
    patch(Parallel, "clip_grad_norm", "Parallel.clip_grad_norm")
    patch(loop, "_total_counts", "_total_counts")
    patch(Throughput, "flops", "Throughput.flops")
    patch(Throughput, "add_step", "Throughput.add_step")
    patch(loop, "lr_at", "lr_at")
    patch(loop.Trainer, "_train_record", "Trainer._train_record")
    patch(Reporter, "log", "Reporter.log")

    original_stop = loop.Trainer._should_stop

    def should_stop(self: loop.Trainer, start: float) -> bool:
        clock.iterations.append(time.perf_counter())
        clock.marks.append(dict(clock.spent))
        began = time.perf_counter()
        try:
            return original_stop(self, start)
        finally:
            clock.spent["Trainer._should_stop"] += time.perf_counter() - began

    original_init = loop.Trainer.__init__

    def init(self: loop.Trainer, setup: loop.TrainSetup) -> None:
        original_init(self, setup)
        trainers.append(self)
        # per instance: the bare arm's optimizer and objective stay unwrapped
        for attr in ("step", "zero_grad"):
            setattr(
                self.optimizer, attr, clock.wrap(f"optimizer.{attr}", getattr(self.optimizer, attr))
            )
        for attr in ("prepare", "count", "input_tokens"):
            setattr(self.objective, attr, clock.wrap(attr, getattr(self.objective, attr)))

    undo += [
        (loop.Trainer, "_should_stop", original_stop),
        (loop.Trainer, "__init__", original_init),
    ]
    loop.Trainer._should_stop, loop.Trainer.__init__ = should_stop, init
    try:
        yield trainers
    finally:
        for owner, attr, original in reversed(undo):
            setattr(owner, attr, original)
        for trainer in trainers:  # instance attributes: back to the class's methods
            for obj, attrs in (
                (trainer.optimizer, ("step", "zero_grad")),
                (trainer.objective, ("prepare", "count", "input_tokens")),
            ):
                for attr in attrs:
                    obj.__dict__.pop(attr, None)


def llmtune_args(args: argparse.Namespace, run_dir: Path, steps: int) -> list[str]:
    never = 10**9  # evaluation and saving happen once, after the loop, outside the timing
    return [
        "pretrain",
        f"hydra.run.dir={run_dir}",
        "model=bert-tiny",
        f"model.max_seq_len={args.seq}",
        "hardware=cpu",
        f"hardware.threads={args.threads}",
        f"train.max_steps={steps}",
        f"train.micro_batch_size={args.micro_batch}",
        f"train.global_batch_size={args.micro_batch}",
        f"train.log_every={args.log_every}",
        f"train.eval_every={never}",
        f"train.save_every={never}",
        "train.eval_batches=1",
        "checkpoint.resume=never",
        *args.overrides,
    ]


def run_llmtune(args: argparse.Namespace, scratch: Path, name: str) -> dict:
    """One llmtune run; per-step seconds of the iterations after warm-up, and their phases."""
    clock = Clock()
    run_dir = scratch / name
    with patched(clock) as trainers, contextlib.redirect_stdout(open(os.devnull, "w")):
        llmtune_main(llmtune_args(args, run_dir, args.warmup + args.steps))
    # iteration i runs from _should_stop call i to call i+1; the last call ends the loop
    first, last = args.warmup, args.warmup + args.steps
    seconds = clock.iterations[last] - clock.iterations[first]
    before, after = clock.marks[first], clock.marks[last]
    phases = {}
    for phase, names in PHASES.items():
        phases[phase] = sum(after.get(n, 0.0) - before.get(n, 0.0) for n in names) / args.steps
    phases["other Python in the loop"] = seconds / args.steps - sum(phases.values())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    # windows wholly after warm-up, with the tokens each of their steps took
    own = [
        (r["tokens_per_s"] * (r["step"] - p["step"]) / (r["tokens"] - p["tokens"]), r)
        for p, r in zip(train, train[1:])
        if p["step"] >= args.warmup
    ]
    return {
        "steps_per_s": args.steps / seconds,
        "phases": phases,
        "trainer": trainers[0],
        # the loop's own throughput records (tokens/s over each logging window) as steps/s
        "own_steps_per_s": statistics.median(s for s, _ in own) if own else None,
        "data_wait_share": statistics.median(r["data_wait_share"] for _, r in own) if own else None,
    }


def run_bare(args: argparse.Namespace, trainer: loop.Trainer) -> dict:
    """The minimum loop on the same model and batches: forward, backward, step, zero_grad."""
    config, objective = trainer.config, trainer.objective
    torch.manual_seed(config.seed)
    model = prepare_model(build_model(config.model, objective.heads), config.hardware).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optim.lr, fused=True)
    batches = train_batches(trainer.s.train_examples, config, (0, 1), grouped=False)
    prepared = []
    for step in range(args.warmup + args.steps):
        batch = objective.prepare(next(batches), streams.micro_batch_rng(config.seed, step, 0))
        total = sum(objective.count(batch).values()).clamp(min=1).float()
        prepared.append((batch, total))
    stamps = []
    for batch, total in prepared:
        stamps.append(time.perf_counter())
        terms = objective.losses(model, batch)
        loss = sum(t.loss_sum for t in terms.values()) / total
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    stamps.append(time.perf_counter())
    seconds = stamps[-1] - stamps[args.warmup]
    return {"steps_per_s": args.steps / seconds}


def report(args: argparse.Namespace, results: dict[str, list[dict]]) -> None:
    a, b = results["llmtune"], results["bare"]
    print(
        f"\nbert-tiny, micro-batch {args.micro_batch} x {args.seq}, {args.threads} thread(s), "
        f"{args.steps} steps after {args.warmup} warm-up, log_every {args.log_every}"
    )
    print("round  llmtune steps/s  bare steps/s  ratio  (llmtune's own tokens/s as steps/s)")
    ratios = []
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        ratios.append(x["steps_per_s"] / y["steps_per_s"])
        own = f"({x['own_steps_per_s']:.1f})" if x["own_steps_per_s"] else "-"
        print(
            f"{i:5d}  {x['steps_per_s']:15.1f}  {y['steps_per_s']:12.1f}  {ratios[-1]:.3f}  {own}"
        )
    ms_a = statistics.median(1e3 / x["steps_per_s"] for x in a)
    ms_b = statistics.median(1e3 / y["steps_per_s"] for y in b)
    print(f"median ratio llmtune/bare steps/s: {statistics.median(ratios):.3f}")
    print(
        f"llmtune {ms_a:.2f} ms/step, bare {ms_b:.2f} ms/step: "
        f"{ms_a - ms_b:.2f} ms/step beyond the bare loop"
    )
    print("\nllmtune per step (median over rounds), ms:")
    for phase in a[0]["phases"]:
        print(f"  {phase:34s} {1e3 * statistics.median(x['phases'][phase] for x in a):7.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="timed steps per arm and round")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--log-every", type=int, default=10, help="train.log_every (default's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="more llmtune overrides, key=value")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    results: dict[str, list[dict]] = {"llmtune": [], "bare": []}
    with tempfile.TemporaryDirectory(prefix="step-overhead-") as scratch:
        # a first, untimed run builds the tokenizer and token stores and gives the bare arm
        # its model config, objective and examples
        trainer = run_llmtune(args, Path(scratch), "prepare")["trainer"]
        for r in range(args.rounds):
            # A B, then B A: neither arm always runs first after the other
            for name in ("llmtune", "bare") if r % 2 == 0 else ("bare", "llmtune"):
                if name == "llmtune":
                    results[name].append(run_llmtune(args, Path(scratch), f"round-{r}"))
                else:
                    results[name].append(run_bare(args, trainer))
            print(
                f"round {r}: llmtune {results['llmtune'][-1]['steps_per_s']:.1f} steps/s, "
                f"bare {results['bare'][-1]['steps_per_s']:.1f}",
                file=sys.stderr,
            )
    report(args, results)


if __name__ == "__main__":
    main()
