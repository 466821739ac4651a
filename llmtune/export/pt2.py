"""`format=pt2`: the inference graph captured with torch.export (dynamic batch and sequence
axes) and saved to model.pt2, which `torch.export.load` runs without llmtune."""

from __future__ import annotations

import torch

from llmtune.export.inference import dynamic_shapes
from llmtune.export.job import ExportJob
from llmtune.export.manifest import tokenize_snippet, write_manifest, write_readme
from llmtune.export.verify import check, max_abs_diff, reference_logits

ARTIFACT = "model.pt2"


def export_program(job: ExportJob) -> torch.export.ExportedProgram:
    """torch.export of the inference graph with dynamic batch and sequence axes."""
    family = job.loaded.family
    shapes = dynamic_shapes(family, job.max_positions)
    return torch.export.export(job.inference, tuple(job.example.values()), dynamic_shapes=shapes)


def usage(job: ExportJob) -> str:
    return "\n".join(
        [
            "import torch",
            tokenize_snippet(job),
            f'model = torch.export.load("{ARTIFACT}").module()',
            "with torch.no_grad():",
            "    logits = model(*inputs)  # a tuple, one tensor per output",
        ]
    )


@torch.no_grad()
def write(job: ExportJob) -> list[str]:
    path = job.out / ARTIFACT
    torch.export.save(export_program(job), path)
    got = torch.export.load(path).module()(*job.sample.values())
    expected = reference_logits(job.inference, job.sample)
    diff = max_abs_diff(expected, got, job.inference.heads, job.sample["attention_mask"])
    line = check(diff, job.config.export.atol, "torch.export.load", job.sample)
    write_readme(
        job, "torch.export (PT2) export", "Runs with `torch` alone (2.6 or newer).", usage(job)
    )
    write_manifest(job, "pt2", [ARTIFACT, "tokenizer.json"], {"verification": line})
    return [f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB), tokenizer.json, README.md", line]
