"""Model FLOPs per step and the device peak they are compared with (MFU).

Convention (PaLM / llm-foundry): 6 x matmul parameters per position computed, plus the
attention term 12 x n_layers x seq_len x d_model, counting heads only where they run.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from llmtune.config.schema import ModelConfig

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
    """Training FLOPs of the transformer body for one position (forward + backward)."""
    per_layer = 4 * cfg.d_model * cfg.d_model + 2 * cfg.d_model * cfg.d_ff
    matmul = 6 * cfg.n_layers * per_layer
    attention = 12 * cfg.n_layers * seq_len * cfg.d_model
    return float(matmul + attention)


def head_flops_per_target(cfg: ModelConfig) -> float:
    """Training FLOPs of the vocabulary projection (plus BERT's transform) for one target."""
    params = cfg.vocab_size * cfg.d_model
    if cfg.family == "bert":
        params += cfg.d_model * cfg.d_model
    return 6.0 * params


def model_flops_per_token(cfg: ModelConfig, seq_len: int, targets_per_position: float) -> float:
    """Training FLOPs per input position: the body, plus the vocabulary head at the share of
    positions that carry a target (GPT: (T-1)/T; BERT MLM: the masking rate)."""
    return body_flops_per_position(cfg, seq_len) + targets_per_position * head_flops_per_target(cfg)


def _time_matmul(a: torch.Tensor, b: torch.Tensor) -> float:
    start = time.perf_counter()
    torch.mm(a, b)
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
        torch.mm(a, b)  # warm-up: thread pool, kernel selection
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


def device_peak_flops(device: torch.device, precision: str, cache_dir: Path) -> float | None:
    """Peak FLOP/s of the device: a table for GPUs, a matmul measured once (cached) for CPUs."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for fragment, peaks in GPU_PEAKS.items():
            if fragment in name:
                return peaks.get(precision) or None
        return None
    key = f"{_cpu_name()}|threads={torch.get_num_threads()}|{precision}"
    path = cache_dir / "cpu_peak_flops.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        known[key] = _measure_cpu_peak(dtype)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(known, indent=2))
    return float(known[key])
