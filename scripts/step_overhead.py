"""Per-step overhead of llmtune's training loop on a tiny model, against a bare torch loop.

    python scripts/step_overhead.py --blocks 20

One process, one thread, one `llmtune pretrain model=bert-tiny` run (in-process). Its steps
come in blocks of --block-steps; between two blocks a block of the bare arm runs: a
hand-written loop (forward with the masked-LM loss written out, backward, fused AdamW step,
zero_grad) on its own copy of the same model (llmtune's builder, same CPU kernels) and the
same batches, drawn and masked beforehand. Interleaving blocks of a few hundred milliseconds
lets both arms see the same machine: on a shared one, whole runs minutes apart differ by 50%.

Steps/s is wall clock; the split is this thread's CPU time (time.thread_time). llmtune's
phases are timed by wrapping the functions the loop calls (each wrapper costs about a
microsecond); "other" is the rest of each iteration. The ratio of the arms is what to compare
across code versions, not absolute times.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
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
OTHER = "other Python in the loop"


def stamp() -> tuple[float, float]:
    return time.perf_counter(), time.thread_time()


class Clock:
    """CPU seconds per wrapped function."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = defaultdict(float)

    def wrap(self, name: str, fn: Callable) -> Callable:
        spent = self.spent

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.thread_time() - start

        return timed


class Bare:
    """The bare arm: the minimum loop on its own copy of the model and the same batches."""

    def __init__(self, trainer: loop.Trainer, n_batches: int) -> None:
        config, objective = trainer.config, trainer.objective
        assert objective.heads == ("mlm",), "the bare loop writes out the mlm loss only"
        torch.manual_seed(config.seed)
        model = build_model(config.model, objective.heads)
        self.model = prepare_model(model, config.hardware).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.optim.lr, fused=True)
        batches = train_batches(trainer.s.train_examples, config, (0, 1), grouped=False)
        self.batches = []  # (batch, positions with a target, their targets, their count)
        for step in range(n_batches):
            rng = streams.micro_batch_rng(config.seed, step, 0)
            batch = objective.prepare(next(batches), rng)
            at = batch["mlm_labels"] != -100
            self.batches.append((batch, at, batch["mlm_labels"][at], max(1, int(at.sum()))))
        self.done = 0
        self.spent: dict[str, float] = defaultdict(float)

    def run(self, steps: int) -> tuple[float, float]:
        """`steps` steps; their (wall, CPU) seconds."""
        began = stamp()
        for _ in range(steps):
            batch, at, targets, n = self.batches[self.done % len(self.batches)]
            self.done += 1
            t0 = time.thread_time()
            hidden = self.model.backbone.features(batch)  # [B, T, D]
            logits = self.model.heads["mlm"](hidden[at])  # [n, V]: only where masked
            loss = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
            loss = loss / n
            t1 = time.thread_time()
            torch.autograd.backward(loss)  # not Tensor.backward: llmtune's arm wraps that
            t2 = time.thread_time()
            self.optimizer.step()
            t3 = time.thread_time()
            self.optimizer.zero_grad(set_to_none=True)
            t4 = time.thread_time()
            for phase, seconds in (
                ("forward", t1 - t0),
                ("backward", t2 - t1),
                ("optimizer step", t3 - t2),
                ("zero_grad", t4 - t3),
            ):
                self.spent[phase] += seconds
        ended = stamp()
        return ended[0] - began[0], ended[1] - began[1]


class Interleaved:
    """Wraps llmtune's loop for timing and runs a bare block between its blocks."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.clock = args, Clock()
        self.bare: Bare | None = None
        self.iteration = 0  # loop iterations begun (the step about to run)
        self.left: tuple[float, float] | None = None  # when llmtune's current block began
        self.mark: dict[str, float] = {}
        self.blocks: list[dict] = []  # one per pair of blocks: both arms' times

    def should_stop(self, trainer: loop.Trainer) -> None:
        """Called as each loop iteration begins: close and open blocks here."""
        args, step = self.args, self.iteration
        self.iteration += 1
        arrived = stamp()
        if step < args.warmup or (step - args.warmup) % args.block_steps:
            return
        if self.left is not None:  # llmtune's block ends: its times, then the bare block
            spent = self.clock.spent
            phases = {
                p: sum(spent[n] - self.mark.get(n, 0.0) for n in names)
                for p, names in PHASES.items()
            }
            wall, cpu = arrived[0] - self.left[0], arrived[1] - self.left[1]
            phases[OTHER] = cpu - sum(phases.values())
            self.blocks.append({"llmtune": (wall, cpu, phases)})
        if self.bare is None:
            self.bare = Bare(trainer, args.warmup + args.block_steps * (args.blocks + 1))
            self.bare.run(args.warmup)
        with trainer.throughput.paused():  # not llmtune's time in its own tokens/s
            self.bare.spent.clear()
            wall, cpu = self.bare.run(args.block_steps)
        phases = dict(self.bare.spent)
        phases[OTHER] = cpu - sum(phases.values())
        if self.blocks and "bare" not in self.blocks[-1]:
            self.blocks[-1]["bare"] = (wall, cpu, phases)  # paired with the block before
        else:
            self.blocks.append({"bare": (wall, cpu, phases)})
        self.mark, self.left = dict(self.clock.spent), stamp()


@contextlib.contextmanager
def patched(timing: Interleaved) -> Iterator[None]:
    """Wrap the loop's collaborators with timing.clock, and its stop check with `timing`."""
    clock, undo = timing.clock, []

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
    original_stop, original_init = loop.Trainer._should_stop, loop.Trainer.__init__

    def should_stop(self: loop.Trainer, start: float) -> bool:
        timing.should_stop(self)
        began = time.thread_time()
        try:
            return original_stop(self, start)
        finally:
            clock.spent["Trainer._should_stop"] += time.thread_time() - began

    def init(self: loop.Trainer, setup: loop.TrainSetup) -> None:
        original_init(self, setup)
        # on the instances: the bare arm's optimizer and objective calls stay unwrapped
        for attr in ("step", "zero_grad"):
            wrapped = clock.wrap(f"optimizer.{attr}", getattr(self.optimizer, attr))
            setattr(self.optimizer, attr, wrapped)
        for attr in ("prepare", "count", "input_tokens"):
            setattr(self.objective, attr, clock.wrap(attr, getattr(self.objective, attr)))

    undo += [
        (loop.Trainer, "_should_stop", original_stop),
        (loop.Trainer, "__init__", original_init),
    ]
    loop.Trainer._should_stop, loop.Trainer.__init__ = should_stop, init
    try:
        yield
    finally:
        for owner, attr, original in reversed(undo):
            setattr(owner, attr, original)


def llmtune_args(args: argparse.Namespace, run_dir: Path) -> list[str]:
    never = 10**9  # evaluation and saving happen once, after the loop, outside the timing
    return [
        "pretrain",
        f"hydra.run.dir={run_dir}",
        "model=bert-tiny",
        f"model.max_seq_len={args.seq}",
        "hardware=cpu",
        f"hardware.threads={args.threads}",
        f"train.max_steps={args.warmup + args.block_steps * args.blocks}",
        f"train.micro_batch_size={args.micro_batch}",
        f"train.global_batch_size={args.micro_batch}",
        f"train.log_every={args.log_every}",
        f"train.eval_every={never}",
        f"train.save_every={never}",
        "train.eval_batches=1",
        "checkpoint.resume=never",
        *args.overrides,
    ]


def report(args: argparse.Namespace, blocks: list[dict]) -> None:
    n = args.block_steps
    pairs = [b for b in blocks if "llmtune" in b and "bare" in b]
    wall_ratios = [b["bare"][0] / b["llmtune"][0] for b in pairs]  # steps/s ratio
    cpu_ratios = [b["bare"][1] / b["llmtune"][1] for b in pairs]
    steps_a = statistics.median(n / b["llmtune"][0] for b in pairs)
    steps_b = statistics.median(n / b["bare"][0] for b in pairs)
    ms_a = statistics.median(1e3 * b["llmtune"][1] / n for b in pairs)
    ms_b = statistics.median(1e3 * b["bare"][1] / n for b in pairs)
    print(
        f"bert-tiny, micro-batch {args.micro_batch} x {args.seq}, {args.threads} thread(s), "
        f"{len(pairs)} pairs of {n}-step blocks after {args.warmup} warm-up steps, "
        f"log_every {args.log_every}"
    )
    print(f"steps/s (median of blocks): llmtune {steps_a:.1f}, bare {steps_b:.1f}")
    print(
        f"llmtune/bare steps/s, median of block pairs: {statistics.median(wall_ratios):.3f} "
        f"wall clock, {statistics.median(cpu_ratios):.3f} CPU time "
        f"(quartiles {statistics.quantiles(cpu_ratios, n=4)[0]:.3f}-"
        f"{statistics.quantiles(cpu_ratios, n=4)[2]:.3f})"
    )
    print(
        f"CPU time per step: llmtune {ms_a:.2f} ms, bare {ms_b:.2f} ms: llmtune spends "
        f"{ms_a - ms_b:.2f} ms/step beyond the bare loop"
    )
    print("\nCPU ms per step (median of blocks)     llmtune     bare")
    for phase in [*PHASES, OTHER]:
        ours = statistics.median(1e3 * b["llmtune"][2][phase] / n for b in pairs)
        theirs = [1e3 * b["bare"][2][phase] / n for b in pairs if phase in b["bare"][2]]
        shown = f"{statistics.median(theirs):8.3f}" if theirs else "       -"
        print(f"  {phase:34s} {ours:8.3f} {shown}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=20, help="timed blocks per arm")
    parser.add_argument("--block-steps", type=int, default=10, help="steps per block")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first, each arm")
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--log-every", type=int, default=10, help="train.log_every (default's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--terminal",
        action="store_true",
        help="leave stdout alone: on a terminal llmtune draws its live progress bar",
    )
    parser.add_argument("overrides", nargs="*", help="more llmtune overrides, key=value")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    timing = Interleaved(args)
    with tempfile.TemporaryDirectory(prefix="step-overhead-") as scratch, patched(timing):
        quiet = open(os.devnull, "w")  # noqa: SIM115  (closed with the redirect below)
        with contextlib.nullcontext() if args.terminal else contextlib.redirect_stdout(quiet):
            llmtune_main(llmtune_args(args, Path(scratch) / "run"))
        quiet.close()
    report(args, timing.blocks)


if __name__ == "__main__":
    main()
