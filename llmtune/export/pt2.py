"""`format=pt2`: the inference graph captured with torch.export (dynamic batch and sequence
axes) and saved to model.pt2, which `torch.export.load` runs without llmtune."""

from __future__ import annotations

import torch

from llmtune.export.inference import dynamic_shapes
from llmtune.export.job import ExportJob, external
from llmtune.export.manifest import torch_usage, write_manifest, write_readme
from llmtune.export.verify import verify

ARTIFACT = "model.pt2"


def export_program(job: ExportJob) -> torch.export.ExportedProgram:
    """torch.export of the inference graph with dynamic batch and sequence axes."""
    shapes = dynamic_shapes(tuple(job.sample), job.max_positions)
    return torch.export.export(job.inference, tuple(job.example.values()), dynamic_shapes=shapes)


@torch.no_grad()
def write(job: ExportJob) -> list[str]:
    path = job.out / ARTIFACT
    with external(job, "torch.export could not capture the model", "try format=torchscript"):
        torch.export.save(export_program(job), path)
    with external(job, f"torch.export.load could not run {path}", "try format=torchscript"):
        got = torch.export.load(path).module()(*job.sample.values())
    line = verify(job, got, "torch.export.load")
    usage = torch_usage(job, f'torch.export.load("{ARTIFACT}").module()')
    write_readme(job, "torch.export (PT2) export", "Runs with `torch` alone (2.6 or newer).", usage)
    write_manifest(job, "pt2", [ARTIFACT, "tokenizer.json"], {"verification": line})
    return [f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB), tokenizer.json, README.md", line]
