"""What lands beside a torch-only or ONNX artifact: tokenizer.json, export.json (inputs,
outputs, labels, verification) and a README showing how to run it without llmtune."""

from __future__ import annotations

import json

from llmtune.export.inference import SEQUENCE_HEADS, output_names
from llmtune.export.job import ExportJob

_README = """# {title}

Exported by `llmtune export` from `{ckpt}`. {runs}

Inputs (int64, shape [batch, sequence], rows right-padded with id {pad_id}, at most {max_len}
tokens): {inputs}. Encode text with `tokenizer.json` (the `tokenizers` package); the
`attention_mask` is 1 on real tokens and 0 on padding{types}.

Outputs, in order: {outputs}.{labels}

```python
{code}
```
"""

_TORCH_USAGE = """import torch
from tokenizers import Tokenizer
tok = Tokenizer.from_file("tokenizer.json")
ids = torch.tensor([tok.encode("The river runs north.").ids])
mask = torch.ones_like(ids)
inputs = (ids, mask{types})
model = {load}
with torch.no_grad():
    logits = model(*inputs)  # a tuple, one tensor per output"""


def _output_text(job: ExportJob) -> str:
    parts = []
    for head, name in zip(job.inference.heads, output_names(job.inference.heads)):
        shape = "[batch, classes]" if head in SEQUENCE_HEADS else "[batch, sequence, classes]"
        parts.append(f"`{name}` {shape}")
    return ", ".join(parts)


def torch_usage(job: ExportJob, load: str) -> str:
    """README code for a torch-only artifact: encode a sentence, `load` the model, run it."""
    types = ", torch.zeros_like(ids)" if "token_type_ids" in job.sample else ""
    return _TORCH_USAGE.format(types=types, load=load)


def write_readme(job: ExportJob, title: str, runs: str, code: str) -> None:
    """README.md and tokenizer.json into the output folder (export.json: `write_manifest`)."""
    info, names = job.loaded.info, tuple(job.sample)
    labels = job.labels
    job.loaded.tokenizer.save(str(job.out / "tokenizer.json"))
    text = _README.format(
        title=title,
        ckpt=job.loaded.step_dir,
        runs=runs,
        pad_id=info.pad_id,
        max_len=job.max_positions,
        inputs=", ".join(f"`{n}`" for n in names),
        types="; `token_type_ids` is 0 on the first segment, 1 on the second"
        if "token_type_ids" in names
        else "",
        outputs=_output_text(job),
        labels=f" Class i is `labels[i]` in export.json: {labels}." if labels else "",
        code=code,
    )
    (job.out / "README.md").write_text(text)


def write_manifest(job: ExportJob, fmt: str, files: list[str], report: dict) -> None:
    manifest = {
        "format": fmt,
        "files": files,
        "checkpoint": str(job.loaded.step_dir),
        "family": job.loaded.family,
        "inputs": list(job.sample),
        "outputs": list(output_names(job.inference.heads)),
        "labels": job.labels,
        "pad_id": job.loaded.info.pad_id,
        **report,
    }
    (job.out / "export.json").write_text(json.dumps(manifest, indent=2) + "\n")
