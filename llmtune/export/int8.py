"""`format=int8`: dynamic int8 quantization of every nn.Linear (weights int8, activations
quantized per batch) for CPU inference, saved as TorchScript and measured against fp32:
file size, latency per batch, and the data.test metric."""

from __future__ import annotations

import copy
import dataclasses
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from llmtune.errors import DataError, UserError
from llmtune.evaluation.language_model import evaluate_language_model
from llmtune.evaluation.tasks import TASK_SCORING, evaluate_task
from llmtune.export.inference import InferenceModel
from llmtune.export.job import ExportJob, external
from llmtune.export.manifest import write_manifest, write_readme
from llmtune.export.torchscript import ARTIFACT, trace, usage, verify_file
from llmtune.export.verify import VerificationError, max_abs_diff, reference_logits
from llmtune.loading import LoadedCheckpoint
from llmtune.models import LanguageModel
from llmtune.objectives import OBJECTIVES

# The metric each kind of checkpoint is judged by, and whether higher is better.
METRICS = (("accuracy", True), ("entity_f1", True), ("loss", False))


def quantize(model: LanguageModel) -> LanguageModel:
    """A copy of `model` whose nn.Linear layers are dynamically quantized to int8."""
    quantize_dynamic = getattr(torch.ao.quantization, "quantize_dynamic", None)
    if quantize_dynamic is None:
        raise UserError(
            f"format=int8 needs torch.ao.quantization.quantize_dynamic, which torch "
            f"{torch.__version__} no longer has; use torch < 2.15"
        )
    with warnings.catch_warnings():
        # deprecated in favour of torchao since torch 2.10, yet still shipped and working in
        # 2.13; the verification below would catch a silently broken replacement
        warnings.simplefilter("ignore")
        return quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)


def metric(loaded: LoadedCheckpoint, job: ExportJob) -> tuple[str, float, bool]:
    """(name, value, higher is better) of `loaded` on data.test, read as evaluate reads it."""
    config = job.config
    objective = loaded.meta.get("objective", loaded.config.objective.name)
    found = OBJECTIVES.get(objective)
    if found is not None and found.scoring in TASK_SCORING:
        results, _ = evaluate_task(loaded, config.data, config.evaluate, config.seed)
    else:
        results = evaluate_language_model(loaded, config.data, config.evaluate, config.seed)
    for name, higher in METRICS:
        if name in results:
            return name, float(results[name]), higher
    raise DataError(
        f"data.test={config.data.test}: no labels to score {objective} on; "
        "give a labelled held-out file"
    )


@torch.no_grad()
def latency_ms(path: Path, inputs: tuple[torch.Tensor, ...], runs: int) -> float:
    """Median milliseconds per batch of a saved TorchScript model, after two warm-up calls."""
    model = torch.jit.load(str(path))
    for _ in range(2):
        model(*inputs)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model(*inputs)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def timing_batch(job: ExportJob) -> tuple[torch.Tensor, ...]:
    """evaluate.batch_size full-length rows of ordinary tokens (latency ignores content)."""
    info, length = job.loaded.info, job.loaded.config.model.max_seq_len
    low = max(info.special_ids, default=-1) + 1  # specials take the first ids in both families
    ids = torch.randint(low, info.vocab_size, (job.config.evaluate.batch_size, length))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if "token_type_ids" in job.sample:
        inputs["token_type_ids"] = torch.zeros_like(ids)
    return tuple(inputs.values())


def _measure(job: ExportJob, fp32_path: Path, q_model: LanguageModel) -> dict:
    batch = timing_batch(job)
    runs = job.config.export.latency_runs
    before = metric(job.loaded, job)
    after = metric(dataclasses.replace(job.loaded, model=q_model), job)
    name, higher = before[0], before[2]
    worse = (before[1] - after[1]) if higher else (after[1] - before[1])
    return {
        "size_mb": [fp32_path.stat().st_size / 1e6, (job.out / ARTIFACT).stat().st_size / 1e6],
        "latency_ms": [
            latency_ms(fp32_path, batch, runs),
            latency_ms(job.out / ARTIFACT, batch, runs),
        ],
        "batch": list(batch[0].shape),
        "metric": name,
        "metric_values": [before[1], after[1]],
        "relative_drop": worse / max(abs(before[1]), 1e-12),
    }


def _lines(report: dict, quant_diff: float) -> list[str]:
    (s0, s1), (t0, t1) = report["size_mb"], report["latency_ms"]
    (m0, m1), b = report["metric_values"], report["batch"]
    return [
        f"file size: fp32 {s0:.2f} MB -> int8 {s1:.2f} MB ({s1 / s0:.0%})",
        f"latency per batch of {b[0]} x {b[1]} tokens (median): fp32 {t0:.1f} ms -> "
        f"int8 {t1:.1f} ms ({t0 / t1:.2f}x)",
        f"{report['metric']} on data.test: fp32 {m0:.4f} -> int8 {m1:.4f} "
        f"(delta {m1 - m0:+.4f}; worse by {report['relative_drop']:+.2%} relative)",
        f"quantization error: max |logit difference| {quant_diff:.2e} vs the fp32 model",
    ]


def write(job: ExportJob) -> list[str]:
    # e.g. no quantized engine for this CPU
    with external(job, "dynamic int8 quantization failed", "use format=torchscript (fp32)"):
        q_model = quantize(job.loaded.model)
    q_inference = InferenceModel(q_model, job.inference.pooling).eval()
    path = job.out / ARTIFACT
    trace(job, q_inference, path)
    q_logits = reference_logits(q_inference, job.sample)  # what the saved file must reproduce
    line = verify_file(job, path, "torch.jit.load of the int8 model", q_logits)
    fp32_logits = reference_logits(job.inference, job.sample)
    mask = job.sample["attention_mask"]
    quant_diff = max_abs_diff(fp32_logits, q_logits, job.inference.heads, mask)
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path = Path(tmp) / "fp32.pt"  # the same format unquantized, for a fair size and speed
        trace(job, job.inference, fp32_path)
        report = _measure(job, fp32_path, q_model)
    lines = _lines(report, quant_diff)
    runs = "Runs with `torch` alone on x86 or ARM CPUs (dynamic int8 Linear layers)."
    write_readme(job, "Dynamic int8 TorchScript export", runs, usage(job))
    write_manifest(job, "int8", [ARTIFACT, "tokenizer.json"], {"verification": line, **report})
    if report["relative_drop"] > job.config.export.max_metric_drop:
        raise VerificationError(
            f"verification failed: {lines[2]} exceeds export.max_metric_drop="
            f"{job.config.export.max_metric_drop}; the export was not kept"
        )
    return [f"wrote {path}, tokenizer.json, README.md", *lines, line]
