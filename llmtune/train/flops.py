"""Model FLOPs per step and the device peak they are compared with (MFU).

Convention (PaLM / llm-foundry): 6 x matmul parameters per position computed, plus the
attention term 12 x n_layers x seq_len x d_model, counting heads only where they run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from llmtune.config.schema import ModelConfig
from llmtune.console import note, stage
from llmtune.kernels import bf16_products, bf16_via_fp32
from llmtune.models import build_model, family

# Dense peak FLOP/s by GPU name fragment and precision (vendor datasheets, no sparsity).
GPU_PEAKS = {
    "H100": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12},
    "A100": {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12},
    "L40S": {"bf16": 362e12, "fp16": 362e12, "fp32": 91.6e12},
    "A10G": {"bf16": 125e12, "fp16": 125e12, "fp32": 31.2e12},
    "L4": {"bf16": 121e12, "fp16": 121e12, "fp32": 30.3e12},
    "V100": {"bf16": 0.0, "fp16": 125e12, "fp32": 15.7e12},
    "T4": {"bf16": 0.0, "fp16": 65e12, "fp32": 8.1e12},
}


def body_flops_per_position(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs of the transformer body for one position (forward + backward): 6 per
    weight of every block's Linears, as the family builds them (grouped-query attention and
    SwiGLU count what they hold), plus 12 x seq_len x the attention width per layer."""
    with torch.device("meta"):  # shapes only
        block = family(cfg.family).backbone(dataclasses.replace(cfg, n_layers=1)).blocks[0]
    per_layer = sum(m.weight.numel() for m in block.modules() if isinstance(m, torch.nn.Linear))
    attention = 12 * cfg.n_layers * seq_len * cfg.n_heads * cfg.head_size
    return float(6 * cfg.n_layers * per_layer + attention)


@dataclass(frozen=True)
class BodyFlops:
    """Training FLOPs of the body per position: `fixed` + `per_len` x seq_len (the attention
    products grow with the row width, which task batches cut to their longest row)."""

    fixed: float
    per_len: float

    def at(self, seq_len: int) -> float:
        return self.fixed + self.per_len * seq_len


def trained_body_flops(model: torch.nn.Module) -> BodyFlops:
    """Training FLOPs of the body per position, counting only the backward work done.

    Per block: the forward (2 per matmul weight, 4 x seq_len x d_model for attention); the
    backward through its activations (2 per weight, 8 x seq_len x d_model for attention) only
    when a trainable parameter sits in it or below it (embeddings, prompts and prefixes
    included); weight gradients (2 more per weight) only for the weights that train. Full
    training gives the 6N + 12 L T d of `body_flops_per_position`; a frozen lower stack costs
    its forward only, LoRA about 4N. Scans every parameter: compute once per run (what trains
    does not change during one).
    """
    backbone, d = model.backbone, model.config.n_heads * model.config.head_size  # attention width
    # what feeds the first block: the embedding tables and their norm (checkpoint key names),
    # and modules outside backbone and heads (soft prompts, prefixes)
    input_side = [p for n, p in backbone.named_parameters() if "emb" in n.split(".")[0]]
    inside = {id(p) for p in backbone.parameters()} | {id(p) for p in model.heads.parameters()}
    input_side += [p for p in model.parameters() if id(p) not in inside]
    trains_below = any(p.requires_grad for p in input_side)
    fixed, per_len = 0.0, 0.0
    for block in backbone.blocks:
        trains_below = trains_below or any(p.requires_grad for p in block.parameters())
        weights = [m.weight for m in block.modules() if isinstance(m, torch.nn.Linear)]
        n = sum(w.numel() for w in weights)
        trained = sum(w.numel() for w in weights if w.requires_grad)
        fixed, per_len = fixed + 2 * n, per_len + 4 * d  # forward: matmuls, then QK^T and AV
        if trains_below:  # activation gradients: 1 per weight, 2 per attention product
            fixed, per_len = fixed + 2 * n, per_len + 8 * d
        fixed += 2 * trained
    return BodyFlops(fixed, per_len)


def vocab_head_flops(head: torch.nn.Module) -> float:
    """Training FLOPs of a head for one target: 6 per matrix weight (the vocabulary projection,
    and BERT's transform before it); vectors (biases, norms) are not matmuls."""
    return 6.0 * sum(p.numel() for p in head.parameters() if p.dim() == 2)


def head_flops_per_target(cfg: ModelConfig) -> float:
    """Training FLOPs of the family's vocabulary head (`Family.lm_head`) for one target."""
    lm_head = family(cfg.family).lm_head
    with torch.device("meta"):  # shapes only
        model = build_model(cfg, (lm_head,))
    return vocab_head_flops(model.heads[lm_head])


def model_flops_per_token(cfg: ModelConfig, seq_len: int, targets_per_position: float) -> float:
    """Training FLOPs per input position: the body, plus the vocabulary head at the share of
    positions that carry a target (GPT: (T-1)/T; BERT MLM: the masking rate). An
    encoder-decoder counts one example of seq_len sources and that share as targets."""
    example = family(cfg.family).training_flops
    if example is not None:
        return example(cfg, seq_len, max(1, round(targets_per_position * seq_len))) / seq_len
    return body_flops_per_position(cfg, seq_len) + targets_per_position * head_flops_per_target(cfg)


def _time_matmul(a: torch.Tensor, b: torch.Tensor) -> float:
    # nn.Linear's layout (x @ W.T): without bf16 hardware, oneDNN's bf16 kernel for it is
    # about 3x faster than torch.mm's, so a plain mm peak made bf16 MFU read above 100%
    start = time.perf_counter()
    torch.nn.functional.linear(a, b)
    return time.perf_counter() - start


def _measure_cpu_peak(dtype: torch.dtype, trials: int = 3, min_seconds: float = 0.2) -> float:
    """Best FLOP/s of square matmuls on all threads.

    The size grows until one product takes `min_seconds` (timer noise and threading overhead
    then vanish) or reaches 4096, so a slow dtype (bf16 without hardware support can be 100x
    slower than fp32) costs about a second instead of minutes. The best of a few trials,
    because a busy machine only ever makes a trial slower.
    """
    size = 256
    while True:
        a = torch.randn(size, size, dtype=dtype)
        b = torch.randn(size, size, dtype=dtype)
        _time_matmul(a, b)  # warm-up: thread pool, kernel selection
        if _time_matmul(a, b) >= min_seconds or size >= 4096:
            break
        size *= 2
    best = min(_time_matmul(a, b) for _ in range(trials))
    return 2 * size**3 / best


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_dtype(precision: str) -> torch.dtype:
    return torch.bfloat16 if precision == "bf16" else torch.float32


def cpu_peak_key(precision: str) -> str:
    """This CPU's entry in the peak cache ("linear": peaks cached before the measurement moved
    from torch.mm are measured again; "fp32-products": bf16 as kernels/bf16.py runs it)."""
    how = "linear|fp32-products" if bf16_via_fp32("cpu", _cpu_dtype(precision)) else "linear"
    return f"{_cpu_name()}|threads={torch.get_num_threads()}|{precision}|{how}"


def device_peak_flops(
    device: torch.device, precision: str, cache_dir: Path, achieved: float = 0.0
) -> float | None:
    """Peak FLOP/s of the device: a table for GPUs, a matmul measured once (cached) for CPUs.

    A cached CPU peak below `achieved` (FLOP/s a run has just reached) was measured on a busy
    machine: it is measured again and the higher of the two kept, so MFU stays honest.
    """
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for fragment, peaks in GPU_PEAKS.items():
            if fragment in name:
                return peaks.get(precision) or None
        return None
    key = cpu_peak_key(precision)
    path = cache_dir / "cpu_peak_flops.json"
    try:
        known = json.loads(path.read_text())
    except FileNotFoundError:
        known = {}
    except (OSError, ValueError):
        known = None
    numbers = isinstance(known, dict) and all(type(v) in (int, float) for v in known.values())
    if not numbers:
        print(f"warning: the cached CPU peak {path} is corrupt; measuring it again")
        known = {}
    if known.get(key, 0.0) <= achieved:
        dtype = _cpu_dtype(precision)
        why = "again: the cached figure is below the achieved" if achieved else "once, for MFU"
        doing = f"measuring {precision} matmul FLOP/s {why}"
        # bf16 measured the way training multiplies it
        with stage("CPU peak", doing), bf16_products("cpu", dtype):
            measured = _measure_cpu_peak(dtype)
            note(f"{measured / 1e9:,.1f} GFLOP/s {precision}, cached in {path}")
        known[key] = max(known.get(key, 0.0), measured)
        path.parent.mkdir(parents=True, exist_ok=True)
        # written whole then renamed: ranks of one machine may read it at the same moment
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=2))
        tmp.replace(path)
    return float(known[key])
