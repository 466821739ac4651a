"""`llmtune plan`: what a pretraining run will cost, printed before anything large exists.

Composes the same config as `llmtune pretrain`; builds the model on the meta device (exact
parameter count, no memory), and reads no text: the data path is sized from the prepared
token stores' manifests, or estimated from the files' sizes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from llmtune.config.schema import RunConfig
from llmtune.console import console as shared_console
from llmtune.data import cache_root
from llmtune.data.footprint import data_rows
from llmtune.kernels import bf16_units, bf16_via_fp32
from llmtune.models import build_model
from llmtune.objectives import entry
from llmtune.train.flops import device_peak_flops, model_flops_per_token
from llmtune.train.hardware import Runtime, resolve_runtime
from llmtune.train.memory import (
    ActivationShape,
    MemoryEstimate,
    available_memory,
    estimate_memory,
    gib,
)

# MFU a step reaches, as a share of the device peak: measured on a 2-core CPU in fp32 for the
# bench workloads (scripts/bench_vs_hf.py); for GPUs what well-tuned small-model runs reach.
# Share of the peak a training step reaches. CPU: measured 78-80% of the cached matmul peak
# for the BERT and GPT bench shapes (scripts/bench_vs_hf.py), less for short sequences.
ASSUMED_MFU = {"cpu": 0.75, "cuda": 0.4}


def _vocab_size(config: RunConfig) -> tuple[int, str]:
    """The embedding rows: model.vocab_size, a tokenizer file's size, or the size to train."""
    if config.model.vocab_size:
        return config.model.vocab_size, "model.vocab_size"
    if config.tokenizer.kind == "file":
        from tokenizers import Tokenizer

        path = Path(config.tokenizer.path)
        path = path / "tokenizer.json" if path.is_dir() else path
        if path.exists():
            return Tokenizer.from_file(str(path)).get_vocab_size(), str(path)
    return config.tokenizer.vocab_size, "tokenizer.vocab_size, at most"


def _targets_share(config: RunConfig) -> float:
    """Share of positions that reach the vocabulary head."""
    return entry(config.objective.name).vocab_share(config.objective, config.model.max_seq_len)


def _memory(config: RunConfig, model: torch.nn.Module, runtime: Runtime):
    device = runtime.device
    shape = ActivationShape(
        batch=config.train.micro_batch_size,
        seq_len=config.model.max_seq_len,
        half=runtime.autocast_dtype is not None,
        half_via_fp32=bf16_via_fp32(device.type, runtime.autocast_dtype),
        # SDPA's fused kernels: always on a GPU; on the CPU only without attention dropout
        flash=device.type == "cuda" or config.model.attn_dropout == 0,
        checkpointing=config.hardware.activation_checkpointing,
        lm_rows_share=_targets_share(config),
        fused_lm_loss=entry(config.objective.name).fused_vocab_loss,
    )
    n_params = model.num_parameters()
    n_trainable = model.num_parameters(trainable_only=True)
    return estimate_memory(config.model, n_params, n_trainable, shape, device.type)


def _memory_table(estimate: MemoryEstimate, free: int | None) -> Table:
    table = Table(title="memory per device (estimate)", show_header=False)
    rows = [
        ("weights", estimate.weights),
        ("gradients", estimate.gradients),
        ("optimizer state (AdamW m, v)", estimate.optimizer),
        ("activations", estimate.activations),
        ("vocabulary head and loss", estimate.head),
    ]
    if estimate.runtime:
        rows.append(("runtime (torch, data)", estimate.runtime))
    for name, value in rows:
        table.add_row(name, gib(value))
    table.add_row("[bold]total", f"[bold]{gib(estimate.total)}")
    table.add_row("available", "unknown" if free is None else gib(free))
    return table


def _speed_rows(config: RunConfig, peak: float | None, device: str) -> list[tuple[str, str]]:
    seq_len = config.model.max_seq_len
    per_token = model_flops_per_token(config.model, seq_len, _targets_share(config))
    tokens = config.train.global_batch_size * seq_len // config.hardware.world_size
    rows = [
        ("FLOPs per token (train)", f"{per_token / 1e6:,.1f} M"),
        ("tokens per step per device", f"{tokens:,}"),
    ]
    if not peak:
        return [*rows, ("device peak", "unknown: no step-time estimate")]
    step_s = tokens * per_token / (peak * ASSUMED_MFU[device])
    hours = step_s * config.train.max_steps / 3600
    return [
        *rows,
        ("device peak", f"{peak / 1e12:.3f} TFLOP/s"),
        ("assumed MFU", f"{ASSUMED_MFU[device]:.0%}"),
        ("step time", f"{step_s:.2f} s ({tokens / step_s:,.0f} tokens/s)"),
        (f"{config.train.max_steps} steps", f"{hours:.2f} h"),
    ]


def _note_cpu_bf16(console: Console, runtime: Runtime) -> None:
    """Say which path bf16 products take on this CPU, and what it buys (see kernels/)."""
    if runtime.device.type != "cpu" or runtime.autocast_dtype != torch.bfloat16:
        return
    units = bf16_units()
    if units is None:
        console.print(
            "[bold yellow]note:[/] this CPU has no bf16 matmul units: bf16 products run in fp32 "
            "arithmetic on bf16-rounded operands, so bf16 saves activation memory, not time"
        )
    else:
        console.print(
            f"[bold]note:[/] this CPU multiplies bf16 on its {units} units: bf16 products "
            "run in hardware, faster than fp32, and activations take half the memory"
        )


def run(config: RunConfig, run_dir: Path) -> None:
    console = shared_console()  # no wrapping off a terminal
    runtime = resolve_runtime(config.hardware)
    vocab, vocab_from = _vocab_size(config)
    model_cfg = dataclasses.replace(config.model, vocab_size=vocab)
    config = dataclasses.replace(config, model=model_cfg)
    heads = entry(config.objective.name).heads(config)
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = build_model(model_cfg, heads)
    summary = Table(title=f"llmtune plan: {model_cfg.family} pretraining", show_header=False)
    summary.add_row("parameters", f"{model.num_parameters():,}")
    summary.add_row("  without embeddings", f"{model.num_parameters(exclude_embeddings=True):,}")
    summary.add_row("vocabulary", f"{vocab:,} (from {vocab_from})")
    summary.add_row("device", f"{runtime.device.type} {runtime.precision} x{runtime.threads}")
    peak = device_peak_flops(runtime.device, runtime.precision, cache_root(config.data))
    for name, value in _speed_rows(config, peak, runtime.device.type):
        summary.add_row(name, value)
    console.print(summary)
    _note_cpu_bf16(console, runtime)
    estimate = _memory(config, model, runtime)
    free = available_memory(runtime.device)
    console.print(_memory_table(estimate, free))
    data = Table(title="data path", show_header=False)
    for name, value in data_rows(config):
        data.add_row(name, value)
    console.print(data)
    if free is not None and estimate.total > free:
        console.print(
            f"[bold red]warning:[/] the run needs about {gib(estimate.total)} but "
            f"{gib(free)} is available; lower train.micro_batch_size (accumulation keeps "
            "the global batch), set hardware.activation_checkpointing=true, or use bf16"
        )
