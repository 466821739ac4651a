"""`format=int8|int8wo|int4wo`: a model whose Linear layers are quantized (export/quantize.py),
saved with torch.export (model.pt2; TorchScript model.pt on the deprecated torch.ao fallback)
and measured against fp32 in the same format: file size, latency per batch, data.test metric."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from llmtune.evaluation.measure import (
    headline_metric,
    latency_ms,
    relative_drop,
    timing_batch,
    weights_mb,
)
from llmtune.export import pt2, torchscript
from llmtune.export.inference import InferenceModel
from llmtune.export.job import ExportJob, external
from llmtune.export.manifest import torch_usage, write_manifest, write_readme
from llmtune.export.quantize import SCHEMES, Quantized, quantize
from llmtune.export.verify import VerificationError, max_abs_diff, reference_logits, verify
from llmtune.loading import LoadedCheckpoint
from llmtune.models import LanguageModel


@dataclasses.dataclass(frozen=True)
class Saver:
    """How one backend's models are written and read back (the same for fp32 and quantized)."""

    artifact: str
    save: Callable[[ExportJob, torch.nn.Module, Path], None]
    load: Callable[[Path], torch.nn.Module]
    reader: str  # for the README and the verification line


def _save_pt2(job: ExportJob, module: torch.nn.Module, path: Path) -> None:
    with torch.no_grad(), external(job, "torch.export could not capture it", "try format=int8wo"):
        torch.export.save(pt2.export_program(dataclasses.replace(job, inference=module)), path)


PT2 = Saver(pt2.ARTIFACT, _save_pt2, lambda p: torch.export.load(p).module(), "torch.export.load")
SCRIPT = Saver(
    torchscript.ARTIFACT,
    torchscript.trace,
    lambda p: torch.jit.load(str(p)),
    "torch.jit.load",
)


def metric(loaded: LoadedCheckpoint, job: ExportJob) -> tuple[str, float, bool]:
    """(name, value, higher is better) of `loaded` on data.test, read as evaluate reads it."""
    return headline_metric(loaded, job.config.data, job.config.evaluate, job.config.seed)


def _measure(job: ExportJob, saver: Saver, fp32_path: Path, q_model: LanguageModel) -> dict:
    batch = timing_batch(job.loaded, job.config.evaluate.batch_size, "token_type_ids" in job.sample)
    runs = job.config.export.latency_runs
    before = metric(job.loaded, job)
    # a quantized GPT lm head is scored through its dequantized weight by the clm loss (which
    # reads head.weight): weight rounding counts, int8 activations of that one matmul do not
    after = metric(dataclasses.replace(job.loaded, model=q_model), job)
    name, higher = before[0], before[2]
    q_path = job.out / saver.artifact
    return {
        "size_mb": [fp32_path.stat().st_size / 1e6, q_path.stat().st_size / 1e6],
        "weights_mb": [weights_mb(job.loaded.model), weights_mb(q_model)],
        "latency_ms": [
            latency_ms(saver.load(fp32_path), batch, runs),
            latency_ms(saver.load(q_path), batch, runs),
        ],
        "batch": list(batch[0].shape),
        "metric": name,
        "metric_values": [before[1], after[1]],
        "relative_drop": relative_drop(before[1], after[1], higher),
    }


def _lines(report: dict, quant_diff: float, fmt: str) -> list[str]:
    (s0, s1), (t0, t1) = report["size_mb"], report["latency_ms"]
    (m0, m1), b = report["metric_values"], report["batch"]
    w0, w1 = report["weights_mb"]
    return [
        f"file size: fp32 {s0:.2f} MB -> {fmt} {s1:.2f} MB ({s1 / s0:.0%}); weights alone "
        f"{w0:.2f} MB -> {w1:.2f} MB ({w1 / w0:.0%})",
        f"latency per batch of {b[0]} x {b[1]} tokens (median): fp32 {t0:.1f} ms -> "
        f"{fmt} {t1:.1f} ms ({t0 / t1:.2f}x)",
        f"{report['metric']} on data.test: fp32 {m0:.4f} -> {fmt} {m1:.4f} "
        f"(delta {m1 - m0:+.4f}; {_change(report['relative_drop'])})",
        f"quantization error: max |logit difference| {quant_diff:.2e} vs the fp32 model",
    ]


def _change(drop: float) -> str:
    """'worse by +9.50% relative', or 'better by 0.20% relative' when the metric improved."""
    if drop == 0:
        return "unchanged"
    return f"worse by {drop:+.2%} relative" if drop > 0 else f"better by {-drop:.2%} relative"


def _usage(job: ExportJob, quantized: Quantized, saver: Saver) -> tuple[str, str]:
    """(what runs it, README code)."""
    if saver is SCRIPT:
        return "Runs with `torch` alone on x86 or ARM CPUs.", torchscript.usage(job)
    load = f'torch.export.load("{saver.artifact}").module()'
    code = torch_usage(job, load).replace(
        "import torch\n", "import torch\nimport torchao  # registers the quantized weight types\n"
    )
    return "Runs with `torch` and `torchao` on the CPU.", code


def write(job: ExportJob) -> list[str]:
    fmt = job.config.format
    with external(job, f"{fmt} quantization failed", "try another of int8, int8wo, int4wo"):
        quantized = quantize(job.loaded.model, fmt)
    saver = PT2 if quantized.backend == "torchao" else SCRIPT
    q_inference = InferenceModel(quantized.model, job.inference.pooling).eval()
    path = job.out / saver.artifact
    saver.save(job, q_inference, path)
    q_logits = reference_logits(q_inference, job.sample)  # what the saved file must reproduce
    with external(job, f"{saver.reader} could not run {path}", "try another format"):
        got = saver.load(path)(*job.sample.values())
    line = verify(job, got, f"{saver.reader} of the {fmt} model", q_logits)
    fp32_logits = reference_logits(job.inference, job.sample)
    mask = job.sample["attention_mask"]
    quant_diff = max_abs_diff(fp32_logits, q_logits, job.inference.heads, mask)
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path = Path(tmp) / f"fp32{Path(saver.artifact).suffix}"  # same format, unquantized
        saver.save(job, job.inference, fp32_path)
        report = _measure(job, saver, fp32_path, quantized.model)
    lines = [*quantized.notes, *_lines(report, quant_diff, fmt)]
    runs, code = _usage(job, quantized, saver)
    write_readme(job, f"Quantized export: {SCHEMES[fmt]}", runs, code)
    extra = {"verification": line, "backend": quantized.backend, "notes": quantized.notes}
    write_manifest(job, fmt, [saver.artifact, "tokenizer.json"], {**extra, **report})
    if report["relative_drop"] > job.config.export.max_metric_drop:
        raise VerificationError(
            f"verification failed: {lines[-2]} exceeds export.max_metric_drop="
            f"{job.config.export.max_metric_drop}; the export was not kept"
        )
    return [f"wrote {path}, tokenizer.json, README.md ({quantized.backend})", *lines, line]
