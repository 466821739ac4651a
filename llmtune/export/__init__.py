"""Writers for formats other than llmtune's own: Hugging Face, ONNX, TorchScript, torch.export
(pt2), GGUF and quantized (int8, int8wo, int4wo through torchao), each verified against the
llmtune model before it counts."""

from __future__ import annotations

from collections.abc import Callable

from llmtune.export import gguf_file, hf, onnx_file, pt2, quantized, seq2seq_graphs, torchscript
from llmtune.export.job import EXTRA_HINT, ExportJob, require
from llmtune.export.verify import VerificationError

WRITERS: dict[str, Callable[[ExportJob], list[str]]] = {
    "hf": hf.write,
    "onnx": onnx_file.write,
    "torchscript": torchscript.write,
    "pt2": pt2.write,
    "int8": quantized.write,
    "int8wo": quantized.write,
    "int4wo": quantized.write,
    "gguf": gguf_file.write,
}

# An encoder-decoder's writers: its own Hugging Face layout, and encoder + decoder graphs.
# TorchScript's tracer, torchao's quantized linears and GGUF are offered for decoders and
# encoders only (no llama.cpp architecture reads a T5 written by llmtune).
ENCODER_DECODER_WRITERS: dict[str, Callable[[ExportJob], list[str]]] = {
    "hf": hf.write,
    "onnx": seq2seq_graphs.write,
    "pt2": seq2seq_graphs.write,
}

# Optional packages per format, checked before the checkpoint is loaded.
EXTRAS: dict[str, tuple[str, ...]] = {
    "hf": ("transformers",),
    "onnx": ("onnx", "onnxscript", "onnxruntime"),
    # int8 falls back to the deprecated torch.ao path without torchao (and says so)
    "int8wo": ("torchao",),
    "int4wo": ("torchao",),
}

__all__ = [
    "ENCODER_DECODER_WRITERS",
    "EXTRAS",
    "EXTRA_HINT",
    "WRITERS",
    "ExportJob",
    "VerificationError",
    "require",
]
