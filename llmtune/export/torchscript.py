"""`format=torchscript`: the inference graph traced to model.pt, which `torch.jit.load` runs
with torch alone (no llmtune), verified after loading it back."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from llmtune.export.job import ExportJob, external
from llmtune.export.manifest import torch_usage, write_manifest, write_readme
from llmtune.export.verify import verify

ARTIFACT = "model.pt"


def trace(job: ExportJob, module: torch.nn.Module, path: Path) -> None:
    """Trace `module` on the job's example inputs and save it to `path`."""
    failing = external(job, "torch.jit.trace could not trace the model", "try format=pt2")
    with warnings.catch_warnings(), failing:
        # torch >= 2.10 marks torch.jit as deprecated (torch.export is its successor: format=pt2);
        # tracer warnings about shapes are checked by verifying on another batch and length
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, tuple(job.example.values()))
    traced.save(str(path))


@torch.no_grad()
def verify_file(
    job: ExportJob, path: Path, against: str, expected: Sequence[torch.Tensor] | None = None
) -> str:
    """Load `path` back with torch.jit.load and verify it on the sample (see verify.verify)."""
    with external(job, f"torch.jit.load could not run {path}", "try format=pt2"):
        got = torch.jit.load(str(path))(*job.sample.values())
    return verify(job, got, against, expected)


def usage(job: ExportJob) -> str:
    return torch_usage(job, f'torch.jit.load("{ARTIFACT}")')


def write(job: ExportJob) -> list[str]:
    path = job.out / ARTIFACT
    trace(job, job.inference, path)
    line = verify_file(job, path, "torch.jit.load")
    write_readme(job, "TorchScript export", "Runs with `torch` alone.", usage(job))
    write_manifest(job, "torchscript", [ARTIFACT, "tokenizer.json"], {"verification": line})
    return [f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB), tokenizer.json, README.md", line]
