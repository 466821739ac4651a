"""Writers for formats other than llmtune's own: Hugging Face, ONNX, TorchScript, torch.export
(pt2), dynamic int8 and GGUF, each verified against the llmtune model before it counts."""

from __future__ import annotations

from collections.abc import Callable

from llmtune.export import gguf_file, hf, int8, onnx_file, pt2, torchscript
from llmtune.export.job import EXTRA_HINT, ExportJob, require
from llmtune.export.verify import VerificationError

WRITERS: dict[str, Callable[[ExportJob], list[str]]] = {
    "hf": hf.write,
    "onnx": onnx_file.write,
    "torchscript": torchscript.write,
    "pt2": pt2.write,
    "int8": int8.write,
    "gguf": gguf_file.write,
}

# Optional packages per format, checked before the checkpoint is loaded.
EXTRAS: dict[str, tuple[str, ...]] = {
    "hf": ("transformers",),
    "onnx": ("onnx", "onnxscript", "onnxruntime"),
}

__all__ = ["EXTRAS", "EXTRA_HINT", "WRITERS", "ExportJob", "VerificationError", "require"]
