"""Rebuild a ready-to-run model from a full llmtune checkpoint (config, tokenizer, weights).

Stand-in until fine-tuning's shared loader (which also resolves adapter checkpoints) lands.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from llmtune import checkpoint
from llmtune.config import load_yaml
from llmtune.config.schema import RunConfig
from llmtune.data import TokenizerInfo, tokenizer_info
from llmtune.errors import CheckpointError
from llmtune.models import LanguageModel, build_model

_NATIVE_HEADS = {"gpt": ["lm"], "bert": ["mlm"]}
_LABEL_HEADS = {"seq_cls": "heads.seq_cls.proj.weight", "token_cls": "heads.token_cls.proj.weight"}


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


def _n_labels(heads: list[str], weights: dict[str, torch.Tensor]) -> int:
    """Label count of a task head, read from its stored projection (rows = labels)."""
    for head, key in _LABEL_HEADS.items():
        if head in heads and key in weights:
            return int(weights[key].shape[0])
    return 0


def load_checkpoint(path: str | Path, device: torch.device | None = None) -> LoadedCheckpoint:
    """Resolve `path` (step folder or run directory), verify checksums, build and load."""
    step_dir = checkpoint.resolve(path)
    meta = checkpoint.verify(step_dir)
    config = load_yaml(step_dir / checkpoint.CONFIG)
    try:
        tokenizer = Tokenizer.from_str((step_dir / checkpoint.TOKENIZER).read_text())
    except Exception as exc:  # the Rust parser raises a bare Exception
        raise CheckpointError(f"{step_dir / checkpoint.TOKENIZER}: unreadable ({exc})") from None
    family = config.model.family
    weights = checkpoint.load_weights(step_dir)
    heads = list(meta.get("heads") or _NATIVE_HEADS[family])
    model = build_model(config.model, heads, _n_labels(heads, weights))
    checkpoint.load_into(model, weights, step_dir)
    model.eval()
    if device is not None:
        model.to(device)
    return LoadedCheckpoint(
        step_dir, config, meta, model, tokenizer, tokenizer_info(tokenizer, family)
    )
