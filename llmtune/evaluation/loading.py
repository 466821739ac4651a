"""A checkpoint (full or adapter) as everything evaluate needs: the model in eval mode, its
run config, tokenizer, special-token ids and meta.json."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from llmtune import checkpoint
from llmtune.adapters import load_model
from llmtune.config.schema import RunConfig
from llmtune.data import TokenizerInfo, tokenizer_info
from llmtune.models import LanguageModel


@dataclass
class LoadedCheckpoint:
    step_dir: Path
    config: RunConfig  # the run config the checkpoint was trained with
    meta: dict[str, Any]
    model: LanguageModel  # in eval mode
    tokenizer: Tokenizer
    info: TokenizerInfo

    @property
    def family(self) -> str:
        return self.config.model.family


def load_checkpoint(path: str | Path, device: torch.device | None = None) -> LoadedCheckpoint:
    """Resolve `path` (step folder or run directory) and load it, full or adapter, through
    fine-tuning's `load_model` (checksums verified, an adapter's base checked)."""
    step_dir = checkpoint.resolve(path)
    model, config, tokenizer, meta = load_model(step_dir)
    if device is not None:
        model.to(device)
    return LoadedCheckpoint(
        step_dir, config, meta, model, tokenizer, tokenizer_info(tokenizer, config.model.family)
    )
