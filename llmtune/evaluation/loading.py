"""A checkpoint (full or adapter) as everything evaluate needs: the model in eval mode, its
run config, tokenizer, special-token ids and meta.json."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from llmtune import checkpoint
from llmtune.adapters.base_model import HF_PREFIX, load_base_weights, read_base
from llmtune.adapters.loading import load_model
from llmtune.config.schema import RunConfig
from llmtune.data import TokenizerInfo, tokenizer_info
from llmtune.models import LanguageModel, build_model


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
    if str(path).startswith(HF_PREFIX):
        return _load_hf(str(path), device)
    step_dir = checkpoint.resolve(path)
    model, config, tokenizer, meta = load_model(step_dir)
    if device is not None:
        model.to(device)
    return LoadedCheckpoint(
        step_dir, config, meta, model, tokenizer, tokenizer_info(tokenizer, model.family.tokenizer)
    )


def _load_hf(path: str, device: torch.device | None) -> LoadedCheckpoint:
    """A Hugging Face folder's backbone (no heads): enough to score its embeddings, so a
    model can be measured before fine-tuning exactly as after."""
    base = read_base(path)
    model = build_model(base.model_config, ())
    load_base_weights(model, base.weights, path, ())
    if device is not None:
        model.to(device)
    config = RunConfig(command="evaluate", model=base.model_config)
    info = tokenizer_info(base.tokenizer, model.family.tokenizer)
    meta = {"objective": "none", "step": None}
    return LoadedCheckpoint(
        Path(path[len(HF_PREFIX) :]), config, meta, model.eval(), base.tokenizer, info
    )
