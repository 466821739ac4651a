"""Does span-corruption pretraining help T5 fine-tuning? (issue 21, proof 2)

Builds a headline task from the shared Wikipedia sample, pretrains t5-tiny on the articles the
task's validation and test sets do not come from, then fine-tunes that checkpoint and the same
architecture from fresh weights (same tokenizer, same seq2seq settings and steps) and prints
ROUGE-L and exact match of both on the held-out test sections.

Task: word-order restoration. The encoder reads a Wikipedia sentence of 6-12 words with its
words shuffled, the decoder writes the sentence: copying alone scores the copy baseline's
ROUGE-L, knowing which English word orders are plausible scores more. `--train-pairs` training
pairs (a low-data regime) come from the pretraining articles; validation and test pairs come
from `--heldout` articles, chosen by seed, that pretraining never reads. (Writing a section's
heading from its body was tried first: at this size both models learn only the commonest
headings, so it measured nothing.)

    python scripts/t5_pretrain_vs_scratch.py --out /tmp/t5proof            # everything
    python scripts/t5_pretrain_vs_scratch.py --out /tmp/t5proof --stage data
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("LLMTUNE_REAL_DATA", REPO.parent / "shared" / "data"))
WIKI = DATA / "corpus" / "wiki_articles.jsonl"
# sentence ends: ". " before a capital letter (good enough for picking short sentences)
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
# a sentence made of plain words and punctuation (no markup, lists or tables)
PLAIN = re.compile(r"^[A-Z][A-Za-z0-9 ,;:'()\-]+[.!?]$")


def sentences(text: str, shortest: int = 6, longest: int = 12) -> list[str]:
    """Plain prose sentences of `shortest`..`longest` words from one article."""
    out = []
    for paragraph in text.split("\n"):
        if paragraph.startswith("=") or not paragraph.strip():
            continue
        for sentence in SENTENCE_END.split(paragraph.strip()):
            if PLAIN.match(sentence) and shortest <= len(sentence.split()) <= longest:
                out.append(sentence)
    return out


def pairs(texts: list[str], rng: random.Random) -> list[dict[str, str]]:
    """(shuffled words, sentence) pairs; a shuffle that leaves the order unchanged is redrawn."""
    rows = []
    for sentence in texts:
        words = sentence.split()
        shuffled = words[:]
        while shuffled == words:
            rng.shuffle(shuffled)
        rows.append({"source": " ".join(shuffled), "target": sentence})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def build_data(out: Path, heldout: int, train_pairs: int, seed: int) -> dict[str, int]:
    """pretrain.jsonl (the articles pretraining reads) and task_{train,validation,test}.jsonl."""
    articles = [json.loads(line) for line in WIKI.open()]
    order = list(range(len(articles)))
    random.Random(seed).shuffle(order)
    held = {articles[i]["title"] for i in order[:heldout]}
    seen = [a for a in articles if a["title"] not in held]
    unseen = [a for a in articles if a["title"] in held]
    write_jsonl(out / "pretrain.jsonl", [{"text": a["text"]} for a in seen])
    rng = random.Random(seed)
    train = [t for a in seen for t in sentences(a["text"])]
    rest = [t for a in unseen for t in sentences(a["text"])]
    rng.shuffle(train)
    rng.shuffle(rest)
    half = min(len(rest) // 2, 300)
    splits = {
        "train": pairs(train[:train_pairs], rng),
        "validation": pairs(rest[:half], rng),
        "test": pairs(rest[half : 2 * half], rng),
    }
    for name, rows in splits.items():
        write_jsonl(out / f"task_{name}.jsonl", rows)
    return {name: len(rows) for name, rows in splits.items()}


def llmtune(args: list[str], log: Path) -> None:
    """Run one llmtune command (2 threads, below other work's priority), its output in `log`."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = ["nice", "-n", "5", sys.executable, "-m", "llmtune", *args]
    print("$ llmtune " + " ".join(args), flush=True)
    with log.open("w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
    if done.returncode:
        sys.exit(f"failed (exit {done.returncode}); see {log}")


def pretrain(out: Path, steps: int, max_time: str, objective: str) -> None:
    llmtune(
        [
            "pretrain", "model=t5-tiny", f"objective={objective}", "data=files",
            f"data.train={out / 'pretrain.jsonl'}",
            "model.dropout=0", "model.attn_dropout=0", f"train.max_steps={steps}",
            "train.eval_every=250", "train.save_every=250", "train.eval_batches=20",
            "optim.lr=3e-3", "optim.warmup_steps=100", f"train.max_time={max_time}",
            "hardware=cpu", f"hydra.run.dir={out / 'pretrain'}",
        ],
        out / "pretrain.out",
    )  # fmt: skip


def make_scratch(pretrained: Path, out: Path, seed: int) -> Path:
    """The pretrained checkpoint's architecture, tokenizer and config with fresh weights
    (the family's own initialisation), written as an llmtune checkpoint."""
    import torch

    from llmtune import checkpoint
    from llmtune.models.model import build_model

    step = checkpoint.resolve(pretrained)
    meta = checkpoint.verify(step)
    torch.manual_seed(seed)
    model = build_model(checkpoint.read_config(step).model, meta.get("heads", []))
    keep = {k: v for k, v in meta.items() if k not in ("files", "step", "metrics", "saved_at")}
    contents = checkpoint.CheckpointContents(
        (step / checkpoint.CONFIG).read_text(),
        (step / checkpoint.TOKENIZER).read_text(),
        None,
        keep,
    )
    return checkpoint.save(
        out / "scratch" / "checkpoints", 0, checkpoint.model_weights(model), contents
    )


def finetune(init: Path, out: Path, name: str, steps: int, lr: float) -> Path:
    """seq2seq fine-tuning, the same keys for both starting points; returns the run folder."""
    run = out / f"ft_{name}"
    llmtune(
        [
            "finetune", f"init_from={init}", "objective=seq2seq", "data=files",
            f"data.train={out / 'task_train.jsonl'}",
            f"data.validation={out / 'task_validation.jsonl'}",
            "objective.source_column=source", "objective.target_column=target",
            "objective.source_prefix=unshuffle: ", "objective.target_max_tokens=32",
            f"train.max_steps={steps}", "train.eval_every=50", "train.save_every=50",
            "train.global_batch_size=16", "train.micro_batch_size=16",
            f"optim.lr={lr}", "optim.warmup_steps=15", "seed=0", "hardware=cpu",
            "checkpoint.resume=never", f"hydra.run.dir={run}",
        ],
        out / f"ft_{name}.out",
    )  # fmt: skip
    return run


def evaluate(run: Path, out: Path, name: str) -> dict:
    folder = out / f"eval_{name}"
    llmtune(
        [
            "evaluate", f"ckpt={run}", "data=files", f"data.test={out / 'task_test.jsonl'}",
            "evaluate.max_new_tokens=32", "hardware=cpu", f"hydra.run.dir={folder}",
        ],
        out / f"eval_{name}.out",
    )  # fmt: skip
    return json.loads((folder / "results.json").read_text())


def pretrain_curve(out: Path) -> tuple[float, list[tuple[int, float]]]:
    """The first logged training loss and (step, val_loss) of every evaluation."""
    rows = [json.loads(line) for line in (out / "pretrain" / "metrics.jsonl").open()]
    first = next(r["loss"] for r in rows if "loss" in r)
    return first, [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]


def copy_baseline(out: Path) -> dict[str, float]:
    """Scores of writing the shuffled source back unchanged (the floor both must beat)."""
    from llmtune.evaluation.generative_metrics import generative_metrics

    rows = [json.loads(line) for line in (out / "task_test.jsonl").open()]
    return generative_metrics([r["source"] for r in rows], [r["target"] for r in rows])


def table(out: Path, results: dict[str, dict]) -> None:
    first, curve = pretrain_curve(out)
    evals = ", ".join(f"step {step} {loss:.3f}" for step, loss in curve)
    print(f"pretraining: first logged training loss {first:.3f}; val_loss {evals}")
    heads = ("rougeL", "rouge1", "rouge2", "EM", "bleu", "loss")
    print(f"{'start':<12} " + " ".join(f"{h:>7}" for h in heads))
    for name, r in results.items():
        loss = f"{r['loss']:.3f}" if "loss" in r else "-"
        print(f"{name:<12} {r['rougeL']:7.4f} {r['rouge1']:7.4f} {r['rouge2']:7.4f} "
              f"{r['exact_match']:7.3f} {r['bleu']:7.2f} {loss:>7}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="work folder (outside the repo)")
    parser.add_argument("--stage", choices=("all", "data", "pretrain", "compare"), default="all")
    parser.add_argument("--heldout", type=int, default=24, help="articles kept out of pretraining")
    parser.add_argument("--train-pairs", type=int, default=2000)
    parser.add_argument("--pretrain-steps", type=int, default=2000)
    parser.add_argument("--pretrain-time", default="38m", help="train.max_time of pretraining")
    parser.add_argument(
        "--objective",
        choices=("span_corruption", "denoising"),
        default="denoising",
        help="pretraining objective: denoising's decoder writes the whole text back, so it"
        " learns the copying the task needs; span corruption's writes only the dropped spans",
    )
    parser.add_argument("--finetune-steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--starts", default="pretrained,scratch", help="which to fine-tune ('' = table only)"
    )
    args = parser.parse_args()
    if not WIKI.is_file():
        sys.exit(f"{WIKI} not found: set LLMTUNE_REAL_DATA to the shared data folder")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.stage in ("all", "data"):
        print("task pairs:", build_data(args.out, args.heldout, args.train_pairs, args.seed))
    if args.stage in ("all", "pretrain"):
        pretrain(args.out, args.pretrain_steps, args.pretrain_time, args.objective)
    if args.stage in ("all", "compare"):
        from llmtune import checkpoint

        results = {}
        for name in filter(None, args.starts.split(",")):
            # the last step pretraining saved (it may have stopped at max_time or SIGTERM)
            init = checkpoint.read_pointer(args.out / "pretrain" / "checkpoints", "latest")
            if name == "scratch":
                init = make_scratch(init, args.out, args.seed)
            elif name != "pretrained":
                sys.exit(f"--starts: {name!r} is neither pretrained nor scratch")
            run = finetune(init, args.out, name, args.finetune_steps, args.lr)
            results[name] = evaluate(run, args.out, name)
        for name in ("pretrained", "scratch"):  # one start run earlier (--starts) joins the table
            done = args.out / f"eval_{name}" / "results.json"
            if name not in results and done.is_file():
                results[name] = json.loads(done.read_text())
        results["copy source"] = copy_baseline(args.out)
        table(args.out, results)


if __name__ == "__main__":
    main()
