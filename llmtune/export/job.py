"""`ExportJob`: everything a format writer needs (the loaded checkpoint, the merged model,
its inference graph, sample inputs, the folder to write); `require`, the extras check, and
`external`, which turns a failing exporter or runtime into one line."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from llmtune.config.schema import RunConfig
from llmtune.errors import ConfigError, UserError
from llmtune.export.inference import InferenceModel
from llmtune.loading import LoadedCheckpoint

EXTRA_HINT = "pip install 'llmtune[export]'"


@dataclass
class ExportJob:
    loaded: LoadedCheckpoint  # its model is plain (LoRA merged), fp32, eval mode, on the CPU
    inference: InferenceModel  # the graph every format captures
    example: dict[str, torch.Tensor]  # traced / exported with (batch 2)
    sample: dict[str, torch.Tensor]  # verified on (another batch size and length)
    out: Path  # a fresh folder; the command moves it into place after verification
    config: RunConfig

    @property
    def max_positions(self) -> int:
        """The longest input the exported graph accepts: prefix and prompt tuning take
        `method.n_tokens` positions of the position table before the real tokens."""
        config = self.loaded.config
        taken = (
            config.method.n_tokens if self.loaded.meta.get("method") in ("prefix", "prompt") else 0
        )
        return config.model.max_positions - taken

    @property
    def labels(self) -> list[str]:
        return [str(x) for x in self.loaded.meta.get("labels") or []]


def require(fmt: str, *modules: str) -> list[ModuleType]:
    """Import the optional packages a format needs, or stop with the extra to install."""
    loaded, missing = [], []
    for name in modules:
        try:
            loaded.append(importlib.import_module(name))
        except ImportError:
            missing.append(name)
    if missing:
        raise ConfigError(
            f"format={fmt} needs {', '.join(missing)}, which is not installed: {EXTRA_HINT}"
        )
    return loaded


@contextlib.contextmanager
def external(job: ExportJob, what: str, hint: str) -> Iterator[None]:
    """Run a step of torch.export, torch.jit, torch.onnx, onnxruntime or transformers: their
    failures are not llmtune bugs, so they end the run as one line (exit 2) saying `what`
    failed and what to try (`hint`); llmtune's own UserErrors pass through unchanged."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        cause = lines[0] if lines else type(exc).__name__
        raise UserError(f"format={job.config.format}: {what} ({cause}); {hint}") from exc
