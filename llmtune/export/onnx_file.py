"""`format=onnx`: the inference graph through torch.onnx's torch.export-based exporter, with
dynamic batch and sequence axes, verified by running model.onnx in onnxruntime."""

from __future__ import annotations

import contextlib
import io
import warnings

import torch

from llmtune.export.inference import dynamic_shapes, output_names
from llmtune.export.job import ExportJob, external, require
from llmtune.export.manifest import write_manifest, write_readme
from llmtune.export.verify import verify

ARTIFACT = "model.onnx"
_USAGE = """import numpy as np
import onnxruntime
from tokenizers import Tokenizer

tok = Tokenizer.from_file("tokenizer.json")
ids = np.array([tok.encode("The river runs north.").ids], dtype=np.int64)
feeds = {{{feeds}}}
session = onnxruntime.InferenceSession("{artifact}", providers=["CPUExecutionProvider"])
logits = session.run(None, feeds)  # a list, one array per output"""


def usage(names: tuple[str, ...]) -> str:
    feeds = ['"input_ids": ids', '"attention_mask": np.ones_like(ids)']
    if "token_type_ids" in names:
        feeds.append('"token_type_ids": np.zeros_like(ids)')
    return _USAGE.format(feeds=", ".join(feeds), artifact=ARTIFACT)


def _export(job: ExportJob) -> None:
    names = tuple(job.sample)  # the graph's inputs, in order
    # the exporter reports progress on stdout and warns about its own internals
    failing = external(job, "torch.onnx could not export the model", "try format=torchscript")
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), failing:
        warnings.simplefilter("ignore")
        torch.onnx.export(
            job.inference,
            tuple(job.example.values()),
            str(job.out / ARTIFACT),
            dynamo=True,  # torch.export-based; needs onnxscript
            input_names=list(names),
            output_names=list(output_names(job.inference.heads)),
            dynamic_shapes=dynamic_shapes(names, job.max_positions),
            external_data=False,  # one self-contained file (fine below 2 GB)
            verbose=False,
        )


def write(job: ExportJob) -> list[str]:
    _, _, onnxruntime = require("onnx", "onnx", "onnxscript", "onnxruntime")
    _export(job)
    path = job.out / ARTIFACT
    feeds = {name: t.numpy() for name, t in job.sample.items()}
    hint = "upgrade onnxruntime (pip install -U onnxruntime) or use format=pt2"
    with external(job, f"onnxruntime could not run {path}", hint):
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(list(output_names(job.inference.heads)), feeds)
    line = verify(job, got, "onnxruntime")
    runs = "Runs with `onnxruntime` (or any ONNX runtime); batch and sequence axes are dynamic."
    write_readme(job, "ONNX export", runs, usage(tuple(job.sample)))
    write_manifest(job, "onnx", [ARTIFACT, "tokenizer.json"], {"verification": line})
    return [f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB), tokenizer.json, README.md", line]
