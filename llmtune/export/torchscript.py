"""`format=torchscript`: the inference graph traced to model.pt, which `torch.jit.load` runs
with torch alone (no llmtune), verified after loading it back."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from llmtune.export.job import ExportJob
from llmtune.export.manifest import tokenize_snippet, write_manifest, write_readme
from llmtune.export.verify import check, max_abs_diff, reference_logits

ARTIFACT = "model.pt"


def trace(module: torch.nn.Module, example: dict[str, torch.Tensor], path: Path) -> None:
    """Trace `module` on `example` and save it to `path`."""
    with warnings.catch_warnings():
        # torch >= 2.10 marks torch.jit as deprecated (torch.export is its successor: format=pt2);
        # tracer warnings about shapes are checked by verifying on another batch and length
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, tuple(example.values()))
    traced.save(str(path))


@torch.no_grad()
def verify_file(job: ExportJob, path: Path, reference: torch.nn.Module, against: str) -> str:
    """Load `path` back with torch.jit.load and compare it with `reference` on the sample."""
    loaded = torch.jit.load(str(path))
    got = loaded(*job.sample.values())
    expected = reference_logits(reference, job.sample)
    diff = max_abs_diff(expected, got, job.inference.heads, job.sample["attention_mask"])
    return check(diff, job.config.export.atol, against, job.sample)


def usage(job: ExportJob) -> str:
    return "\n".join(
        [
            "import torch",
            tokenize_snippet(job),
            f'model = torch.jit.load("{ARTIFACT}")',
            "with torch.no_grad():",
            "    logits = model(*inputs)  # a tuple, one tensor per output",
        ]
    )


def write(job: ExportJob) -> list[str]:
    path = job.out / ARTIFACT
    trace(job.inference, job.example, path)
    line = verify_file(job, path, job.inference, "torch.jit.load")
    write_readme(job, "TorchScript export", "Runs with `torch` alone.", usage(job))
    write_manifest(job, "torchscript", [ARTIFACT, "tokenizer.json"], {"verification": line})
    return [f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB), tokenizer.json, README.md", line]
