"""Benchmark llmtune's pretraining loop against the Hugging Face Trainer on the same model.

Each arm runs in its own subprocess (so peak RSS is its own), arms interleave A B A B, and
the table shows median tokens/s after warm-up, the ratio llmtune/HF, peak RSS and MFU.

    python scripts/bench_vs_hf.py --workload bert gpt --precision fp32 bf16 --steps 10
    python scripts/bench_vs_hf.py --workload bert --profile   # where each arm's time goes

llmtune runs through its real CLI (`llmtune.cli.main(["pretrain", ...])`); the Trainer gets
the very same token ids from llmtune's data pipeline (same corpus, tokenizer and examples).
Needs the `bench` extra (transformers, accelerate).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
from pathlib import Path

from bench_harness import (
    THREADS,
    finish_child,
    interleaved,
    llmtune_steps,
    maybe_profiled,
    print_table,
    real_data,
    run_child,
    trainer_clock,
)

LR = 5e-4

# name -> model shape, sequence length and batch size (the two workloads + gpt2-small)
WORKLOADS = {
    "bert": dict(family="bert", layers=4, d=512, heads=8, ff=2048, vocab=30522, seq=128, batch=16),
    "gpt": dict(family="gpt", layers=6, d=512, heads=8, ff=2048, vocab=50257, seq=256, batch=8),
    "gpt2-small": dict(
        family="gpt", layers=12, d=768, heads=12, ff=3072, vocab=50257, seq=512, batch=2
    ),
    # SmolLM2-135M's shape: 9 query heads sharing 3 key/value heads, SwiGLU, tied embeddings
    "llama": dict(
        family="llama", layers=30, d=576, heads=9, kv=3, ff=1536, vocab=49152, seq=256, batch=8
    ),
}
PRESET = {"bert": "bert-small", "gpt": "gpt-mini", "llama": "smollm2-135m"}
POSITIONS = {"bert": 512, "gpt": 1024, "llama": 8192}


# ---- shared: the llmtune config both arms use ------------------------------------------------
def overrides(w: dict, corpus: Path, precision: str, total_steps: int) -> list[str]:
    """The `llmtune pretrain` overrides of one workload (the HF arm composes the same ones)."""
    return [
        f"model={PRESET[w['family']]}",
        f"model.n_layers={w['layers']}",
        f"model.d_model={w['d']}",
        f"model.n_heads={w['heads']}",
        f"model.d_ff={w['ff']}",
        f"model.vocab_size={w['vocab']}",
        f"model.max_seq_len={w['seq']}",
        f"model.n_positions={POSITIONS[w['family']]}",
        *([f"model.n_kv_heads={w['kv']}"] if "kv" in w else []),
        "data=files",
        f"data.train={corpus}",
        f"train.micro_batch_size={w['batch']}",
        f"train.global_batch_size={w['batch']}",
        f"train.max_steps={total_steps}",
        "train.log_every=1",
        "train.eval_every=1000000",
        "train.save_every=1000000",
        "train.eval_batches=1",
        f"optim.lr={LR}",
        "optim.warmup_steps=0",
        "hardware.device=cpu",
        f"hardware.precision={precision}",
        f"hardware.threads={THREADS}",
        "checkpoint.resume=never",
    ]


def llmtune_examples(args: argparse.Namespace):
    """Training examples and tokenizer exactly as `llmtune pretrain` builds them."""
    from llmtune.commands.pretrain import _with_vocab
    from llmtune.config.load import load_yaml
    from llmtune.data import lm_examples, prepare_data, tokenizer_info
    from llmtune.data.rows import to_tensors
    from llmtune.models import family
    from llmtune.objectives import build_objective

    config = load_yaml(Path(args.config))
    prepared = prepare_data(config)
    tokenizer = prepared.tokenizer
    info = tokenizer_info(tokenizer, family(config.model.family).tokenizer)
    config = _with_vocab(config, info.vocab_size)
    objective = build_objective(config.objective, info)
    seq_len = config.model.max_seq_len
    make = lambda store: objective.make_examples(store, seq_len, config.seed)  # noqa: E731
    examples = to_tensors(lm_examples(make, prepared, config)["train"])
    return examples, tokenizer, config


# ---- child: llmtune ---------------------------------------------------------------------------
def run_llmtune(args: argparse.Namespace, total_steps: int) -> Path:
    """`llmtune pretrain` through its CLI, in this process; returns the run directory."""
    from llmtune.cli import main

    run_dir = Path(tempfile.mkdtemp(prefix="bench-llmtune-"))
    ovr = overrides(WORKLOADS[args.workload], Path(args.corpus), args.precision, total_steps)
    main(["pretrain", *ovr, f"hydra.run.dir={run_dir}"])
    return run_dir


def child_prepare(args: argparse.Namespace) -> dict:
    """One untimed step: builds the tokenizer and token caches, measures the CPU peak, and
    leaves the resolved config that the Trainer arm reads."""
    run_dir = run_llmtune(args, 1)
    return {"config": str(next(run_dir.glob("checkpoints/step-*/config.yaml")))}


def child_llmtune(args: argparse.Namespace) -> dict:
    profiled: dict = {}
    with maybe_profiled(args.profile, profiled):
        run_dir = run_llmtune(args, args.warmup + args.steps)
    return {**llmtune_steps(run_dir, args.warmup), **profiled}


# ---- child: Hugging Face Trainer -----------------------------------------------------------
def hf_model(w: dict):
    from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

    if w["family"] == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(
            vocab_size=w["vocab"],
            hidden_size=w["d"],
            intermediate_size=w["ff"],
            num_hidden_layers=w["layers"],
            num_attention_heads=w["heads"],
            num_key_value_heads=w["kv"],
            max_position_embeddings=POSITIONS["llama"],
            rope_theta=100000.0,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
        )
        return LlamaForCausalLM(cfg)

    if w["family"] == "bert":
        cfg = BertConfig(
            vocab_size=w["vocab"],
            hidden_size=w["d"],
            num_hidden_layers=w["layers"],
            num_attention_heads=w["heads"],
            intermediate_size=w["ff"],
            max_position_embeddings=512,
            layer_norm_eps=1e-12,
        )
        return BertForMaskedLM(cfg)
    cfg = GPT2Config(
        vocab_size=w["vocab"],
        n_positions=1024,
        n_embd=w["d"],
        n_layer=w["layers"],
        n_head=w["heads"],
        n_inner=w["ff"],
    )
    return GPT2LMHeadModel(cfg)


def hf_data(w: dict, examples: dict, tokenizer):
    """(dataset, collator): MLM masking by DataCollatorForLanguageModeling, as HF users do."""
    import datasets
    from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerFast
    from transformers.data.data_collator import default_data_collator

    if w["family"] == "bert":
        keys = ("input_ids", "token_type_ids", "attention_mask")
        ds = datasets.Dataset.from_dict({k: examples[k].tolist() for k in keys})
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tokenizer,
            pad_token="[PAD]",
            unk_token="[UNK]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
        )
        return ds, DataCollatorForLanguageModeling(fast, mlm=True, mlm_probability=0.15)
    ids = examples["input_ids"].tolist()
    ds = datasets.Dataset.from_dict({"input_ids": ids, "labels": ids})
    return ds, default_data_collator


def child_hf(args: argparse.Namespace) -> dict:
    import torch
    from transformers import Trainer, TrainingArguments

    torch.set_num_threads(THREADS)
    w = WORKLOADS[args.workload]
    examples, tokenizer, config = llmtune_examples(args)
    torch.manual_seed(0)
    model = hf_model(w)
    dataset, collator = hf_data(w, examples, tokenizer)
    marks: list[float] = []
    targs = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="bench-hf-"),
        per_device_train_batch_size=w["batch"],
        max_steps=args.warmup + args.steps,
        learning_rate=LR,
        weight_decay=config.optim.weight_decay,
        bf16=args.precision == "bf16",
        use_cpu=True,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=dataset,
        data_collator=collator,
        callbacks=[trainer_clock(marks)],
    )
    profiled: dict = {}
    with maybe_profiled(args.profile, profiled):
        trainer.train()
    step_s = [b - a for a, b in zip(marks, marks[1:])]
    return {"step_s": step_s[args.warmup :], **profiled}


# ---- parent ------------------------------------------------------------------------------------
def make_corpus(out: Path) -> Path:
    """Real text from the shared corpus when present, else generated long documents."""
    real = real_data() / "corpus" / "wiki_articles.jsonl"
    if real.exists():
        return real
    rng = random.Random(0)
    syllable = "{}{}{}".format
    words = [
        syllable(rng.choice("bcdfglmnprst"), rng.choice("aeiou"), rng.choice("nrst"))
        for _ in range(3000)
    ]
    path = out / "corpus.jsonl"
    with path.open("w") as f:
        for _ in range(400):
            text = " ".join(rng.choice(words) for _ in range(1500))
            f.write(json.dumps({"text": text}) + "\n")
    return path


def run_arm(arm: str, args: argparse.Namespace, workload: str, precision: str) -> dict:
    config = ["--config", args.config] if arm == "hf" else []
    child = [
        *config,
        *("--child", arm, "--workload", workload, "--precision", precision),
        *("--steps", str(args.steps), "--warmup", str(args.warmup), "--corpus", str(args.corpus)),
        *(["--profile"] if args.profile else []),
    ]
    return run_child(__file__, child, args.scratch, args.quiet)


def bench(args: argparse.Namespace, workload: str, precision: str) -> dict:
    w = WORKLOADS[workload]
    args.config = run_arm("prepare", args, workload, precision)["config"]
    results = interleaved(
        ["llmtune", "hf"], args.rounds, lambda arm: run_arm(arm, args, workload, precision)
    )
    tokens = w["batch"] * w["seq"]
    row = {"workload": workload, "precision": precision}
    for arm, runs in results.items():
        steps = [s for r in runs for s in r["step_s"]]
        row[f"{arm}_tok_s"] = tokens / statistics.median(steps)
        row[f"{arm}_rss_mib"] = max(r["peak_rss_mib"] for r in runs)
    row["ratio"] = row["llmtune_tok_s"] / row["hf_tok_s"]
    for arm, runs in results.items():
        if "profile" in runs[-1]:
            print(f"\n{arm}, {workload} {precision}: ops by self CPU time (profiled run)")
            print(runs[-1]["profile"])
    for key in ("mfu", "tflops", "data_wait"):
        row[key] = statistics.median(r[key] for r in results["llmtune"])
    return row


COLUMNS = [
    ("workload", "workload", ""),
    ("prec", "precision", ""),
    ("llmtune tok/s", "llmtune_tok_s", ".1f"),
    ("HF tok/s", "hf_tok_s", ".1f"),
    ("ratio", "ratio", ".2f"),
    ("llmtune MiB", "llmtune_rss_mib", ".0f"),
    ("HF MiB", "hf_rss_mib", ".0f"),
    ("MFU", "mfu", ".1%"),
    ("TFLOP/s", "tflops", ".3f"),
    ("data wait", "data_wait", ".1%"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", nargs="+", default=["bert", "gpt"], choices=sorted(WORKLOADS))
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    p.add_argument("--steps", type=int, default=10, help="measured steps per run")
    p.add_argument("--warmup", type=int, default=2, help="steps dropped before measuring")
    p.add_argument("--rounds", type=int, default=2, help="A B rounds (interleaved)")
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--quiet", action="store_true", help="hide the children's output")
    p.add_argument(
        "--profile", action="store_true", help="print each arm's top ops (slows both arms)"
    )
    p.add_argument("--child", choices=["llmtune", "hf", "prepare"], help=argparse.SUPPRESS)
    p.add_argument("--corpus", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.child:
        args.workload, args.precision = args.workload[0], args.precision[0]
        if args.child == "prepare":
            result = child_prepare(args)
        else:
            result = child_llmtune(args) if args.child == "llmtune" else child_hf(args)
        finish_child(args.out, result)
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-vs-hf-") as scratch:
        args.scratch = Path(scratch)
        args.corpus = make_corpus(args.scratch)
        for workload in args.workload:
            for precision in args.precision:
                rows.append(bench(args, workload, precision))
                print_table(rows, COLUMNS)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    corpus = args.corpus if args.corpus.exists() else "generated (removed with the scratch folder)"
    print(f"\ncorpus {corpus}; {args.steps} steps after {args.warmup} warm-up, ")
    print(f"{args.rounds} interleaved rounds, {THREADS} threads; tok/s = batch x seq / median step")


if __name__ == "__main__":
    main()
