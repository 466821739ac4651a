"""Why torchao int8 (dynamic activations) can be slower than fp32 on a small encoder: CPU
latency per batch of a checkpoint in fp32, int8 (dynamic int8 activations, int8 weights) and
int8wo (int8 weights, fp32 activations), eager and under torch.compile, at two batch sizes,
measured interleaved (round-robin, median of rounds) in one process; then where an eager int8
call spends its time (torch.profiler, top operators).

    nice -n 5 python scripts/int8_latency.py --ckpt /tmp/distill_proof/teacher --threads 2
    python scripts/int8_latency.py --ckpt <ckpt> --batches 1 --rounds 2 --no-compile  # smoke

The models are llmtune's own (`llmtune.export.quantize.quantize`, what `llmtune export
format=int8` saves), run on rows of the checkpoint's max_seq_len tokens.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from llmtune.evaluation.measure import timing_batch
from llmtune.export.inference import InferenceModel
from llmtune.export.quantize import quantize
from llmtune.loading import load_checkpoint


def timed(model: torch.nn.Module, inputs: tuple, calls: int) -> float:
    """Milliseconds per call over `calls` calls."""
    start = time.perf_counter()
    for _ in range(calls):
        model(*inputs)
    return (time.perf_counter() - start) * 1e3 / calls


def variants(ckpt: str, compile_too: bool) -> tuple[dict[str, torch.nn.Module], object]:
    loaded = load_checkpoint(ckpt, torch.device("cpu"))
    model = loaded.model.float().eval()
    out = {"fp32": InferenceModel(model).eval()}
    for fmt in ("int8", "int8wo"):
        out[fmt] = InferenceModel(quantize(model, fmt).model).eval()
    if compile_too:
        for name in list(out):
            out[f"{name}+compile"] = torch.compile(out[name])
    return out, loaded


def profile_top(model: torch.nn.Module, inputs: tuple, rows: int) -> None:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            model(*inputs)
    print(f"\neager int8, batch of {rows} rows: top operators by self CPU time (2 calls)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=3, help="calls per timed round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    models, loaded = variants(args.ckpt, not args.no_compile)
    with_types = "token_type_ids" in loaded.model.input_names
    torch.manual_seed(0)
    results: dict[tuple[int, str], list[float]] = {}
    with torch.inference_mode():
        for rows in args.batches:
            inputs = timing_batch(loaded, rows, with_types)
            for model in models.values():  # warm-up (and compilation) outside the timing
                for _ in range(2):
                    model(*inputs)
            for _ in range(args.rounds):  # interleaved: load changes hit every variant alike
                for name, model in models.items():
                    results.setdefault((rows, name), []).append(timed(model, inputs, args.calls))
        seq = loaded.config.model.max_seq_len
        print(
            f"\nms per batch (median of {args.rounds} rounds of {args.calls} calls), rows x {seq}"
        )
        print(f"{'variant':16} " + " ".join(f"{f'{r} rows':>14}" for r in args.batches))
        for name in models:
            cells = []
            for rows in args.batches:
                ms = statistics.median(results[(rows, name)])
                base = statistics.median(results[(rows, "fp32")])
                cells.append(f"{ms:8.1f} {base / ms:4.2f}x")
            print(f"{name:16} " + " ".join(f"{c:>14}" for c in cells))
        for rows in args.batches:
            profile_top(models["int8"], timing_batch(loaded, rows, with_types), rows)


if __name__ == "__main__":
    main()
