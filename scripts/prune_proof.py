"""Pruning proof: attention heads (and blocks) removed by measured importance from the
fine-tuned MiniLM teacher of scripts/distill_proof.py, then a short recovery fine-tune.
Prints, for the teacher, each pruned model and its recovered fine-tune: parameters, weights,
CPU latency per batch and test accuracy on rt_sentiment.

    nice -n 5 python scripts/prune_proof.py --teacher /tmp/distill_proof/teacher \
        --out /tmp/prune_proof                                  # ~15 min, 2 threads
    python scripts/prune_proof.py --teacher <ckpt> --out /tmp/pp_smoke --recovery-steps 2 \
        --max-test 64 --variants heads=6                        # a smoke run

Each variant is `llmtune prune` settings joined by commas: `heads=18` removes the 18 least
important of MiniLM's 72 heads (6 blocks x 12; gradient importance, Michel et al. 2019),
`heads=18,layers=2` also its 2 least needed blocks. `llmtune prune` measures the test rows
before and after; the latency column is measured at the end, the teacher and every pruned
model alternating in one process (a busy machine slows them alike), and the recovered
checkpoint's latency is the pruned one's (same shapes). A variant whose prune and recovery
results are already in `--out` is not run again.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from llmtune.cli import main as llmtune

DATA = Path(os.environ.get("LLMTUNE_REAL_DATA", Path(__file__).parents[1] / "../shared/data"))
FOLDER = DATA / "rt_sentiment"


def prune(teacher: Path, out: Path, variant: str, args: argparse.Namespace) -> dict:
    settings = [f"prune.{kv}" for kv in variant.split(",")]
    run = out.with_name(out.name + ".run")
    if (run / "results.json").is_file():
        return json.loads((run / "results.json").read_text())
    cap = [f"evaluate.max_examples={args.max_test}"] if args.max_test else []
    llmtune(
        ["prune", f"ckpt={teacher}", f"out={out}", *settings, "prune.batches=8",
         f"data.train={FOLDER / 'train.jsonl'}", f"data.test={FOLDER / 'test.jsonl'}",
         f"prune.latency_runs={args.latency_runs}", f"hydra.run.dir={run}", *cap]
    )  # fmt: skip
    return json.loads((run / "results.json").read_text())


def recover(pruned: Path, run: Path, args: argparse.Namespace) -> float:
    steps = args.recovery_steps
    out = run.with_name(run.name + ".eval")
    if (out / "results.json").is_file():
        return float(json.loads((out / "results.json").read_text())["accuracy"])
    llmtune(
        ["finetune", f"hydra.run.dir={run}", f"init_from={pruned}",
         "experiment=finetune-rt-sentiment-minilm", f"data.train={FOLDER / 'train.jsonl'}",
         f"data.validation={FOLDER / 'validation.jsonl'}", f"train.max_steps={steps}",
         f"train.eval_every={steps}", f"train.save_every={steps}", "train.eval_batches=8",
         f"optim.lr={args.lr}", f"optim.warmup_steps={min(10, steps // 5)}", "hardware=cpu",
         f"hardware.threads={args.threads}"]
    )  # fmt: skip
    cap = [f"evaluate.max_examples={args.max_test}"] if args.max_test else []
    llmtune(
        ["evaluate", f"ckpt={run}", f"data.test={FOLDER / 'test.jsonl'}", "hardware=cpu",
         f"hardware.threads={args.threads}", f"hydra.run.dir={out}", *cap]
    )  # fmt: skip
    return float(json.loads((out / "results.json").read_text())["accuracy"])


def interleaved_latency(folders: list[Path], batch: int, runs: int, rounds: int = 5) -> list[float]:
    """Median ms per batch of each checkpoint, the models taking turns `rounds` times."""
    import statistics

    from llmtune.evaluation.measure import latency_ms, timing_batch
    from llmtune.export.inference import InferenceModel
    from llmtune.loading import load_checkpoint

    models = []
    for folder in folders:
        loaded = load_checkpoint(folder)
        inputs = timing_batch(loaded, batch, "token_type_ids" in loaded.model.input_names)
        models.append((InferenceModel(loaded.model).eval(), inputs))
    times: list[list[float]] = [[] for _ in folders]
    for _ in range(rounds):
        for i, (model, inputs) in enumerate(models):
            times[i].append(latency_ms(model, inputs, runs))
    return [statistics.median(t) for t in times]


def row(name: str, measured: dict, accuracy: float | None = None) -> dict:
    heads = sum(measured["heads"])
    return {
        "model": name,
        "blocks": measured["n_layers"],
        "heads": heads,
        "parameters": measured["parameters"],
        "weights_mb": measured["weights_mb"],
        "latency_ms": measured["latency_ms"],
        "batch": measured["batch"],
        "accuracy": measured["value"] if accuracy is None else accuracy,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variants", nargs="+", default=["heads=18", "heads=18,layers=2"])
    parser.add_argument("--recovery-steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--latency-runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-test", type=int, default=0, help="0 = the whole test split")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    table, folders = [], [args.teacher.resolve()]
    for i, variant in enumerate(args.variants):
        name = variant.replace(",", "+").replace("=", "")
        report = prune(args.teacher.resolve(), out / name, variant, args)
        if i == 0:
            table.append(row("teacher (fine-tuned MiniLM)", report["before"]))
        table.append(row(f"pruned {variant}", report["after"]))
        acc = recover(out / name, out / f"{name}-recovered", args)
        steps = f"+{args.recovery_steps} steps"
        table.append(row(f"pruned {variant}, recovered {steps}", report["after"], acc))
        folders.append(out / name)
    times = interleaved_latency(folders, table[0]["batch"][0], args.latency_runs)
    # teacher, then each pruned model's time for its own row and its recovered row
    for r, ms in zip(table, [times[0]] + [t for t in times[1:] for _ in range(2)], strict=True):
        r["latency_ms"] = ms
    (out / "prune_proof.json").write_text(json.dumps(table, indent=2) + "\n")
    batch = "x".join(str(n) for n in table[0]["batch"])
    print(
        f"\nlatency: median of 5 interleaved rounds of {args.latency_runs} CPU batches of "
        f"{batch} tokens"
    )
    head = f"{'model':44} {'blocks':>6} {'heads':>5} {'params':>8} {'MB':>6} {'ms':>7} {'acc':>7}"
    print(head)
    for r in table:
        print(
            f"{r['model']:44} {r['blocks']:>6} {r['heads']:>5} {r['parameters'] / 1e6:>7.2f}M "
            f"{r['weights_mb']:>6.1f} {r['latency_ms']:>7.1f} {r['accuracy']:>7.4f}"
        )


if __name__ == "__main__":
    main()
