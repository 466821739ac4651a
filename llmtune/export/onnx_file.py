"""`format=onnx`: the inference graph through torch.onnx's torch.export-based exporter, with
dynamic batch and sequence axes, verified by running model.onnx in onnxruntime."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable
from pathlib import Path

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


# what to tell a user whose onnxruntime cannot run a graph torch.onnx wrote
_RUNTIME_HINT = "upgrade onnxruntime (pip install -U onnxruntime) or use format=pt2"


def export_graph(
    job: ExportJob,
    module: torch.nn.Module,
    example: tuple,
    path: Path,
    names: tuple[str, ...],
    outputs: list[str],
    dynamic: dict,
) -> None:
    """torch.onnx's torch.export-based exporter, quietly: it reports progress on stdout and
    warns about its own internals. A failure is one line suggesting format=pt2, which every
    model exports to."""
    require("onnx", "onnx", "onnxscript", "onnxruntime")
    failing = external(job, "torch.onnx could not export the model", "try format=pt2")
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), failing:
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, example, str(path), dynamo=True,  # torch.export-based; needs onnxscript
            input_names=list(names), output_names=outputs, dynamic_shapes=dynamic,
            external_data=False,  # one self-contained file (fine below 2 GB)
            verbose=False,
        )  # fmt: skip


def graph_runner(job: ExportJob, path: Path) -> Callable[[dict, list[str] | None], list]:
    """A function running the graph at `path` in onnxruntime on numpy feeds; a failure to load
    or run it is one line."""
    onnxruntime = require("onnx", "onnx", "onnxscript", "onnxruntime")[2]
    failing = lambda: external(job, f"onnxruntime could not run {path}", _RUNTIME_HINT)  # noqa: E731
    with failing():
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(feeds: dict, outputs: list[str] | None = None) -> list:
        with failing():
            return session.run(outputs, feeds)

    return run


def write(job: ExportJob) -> list[str]:
    names = tuple(job.sample)  # the graph's inputs, in order
    outputs = list(output_names(job.inference.heads))
    path = job.out / ARTIFACT
    dynamic = dynamic_shapes(names, job.max_positions)
    example = tuple(job.example.values())
    export_graph(job, job.inference, example, path, names, outputs, dynamic)
    got = graph_runner(job, path)({n: t.numpy() for n, t in job.sample.items()}, outputs)
    line = verify(job, got, "onnxruntime")
    runs = "Runs with `onnxruntime` (or any ONNX runtime); batch and sequence axes are dynamic."
    write_readme(job, "ONNX export", runs, usage(tuple(job.sample)))
    write_manifest(job, "onnx", [ARTIFACT, "tokenizer.json"], {"verification": line})
    return [f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB), tokenizer.json, README.md", line]
