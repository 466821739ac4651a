"""A checkpoint (full or adapter) as everything evaluate needs: the model in eval mode, its
run config, tokenizer, special-token ids and meta.json."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from llmtune import checkpoint
from llmtune.adapters.base_model import GGUF_PREFIX, HF_PREFIX, load_base_weights, read_base
from llmtune.adapters.loading import load_model
from llmtune.config.schema import RunConfig, TokenizerConfig
from llmtune.data import TokenizerInfo, tokenizer_info
from llmtune.models import LanguageModel, build_model, family


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

    @property
    def stop_id(self) -> int | None:
        """The token generation ends at: a chat model's end-of-turn token, else EOS."""
        name = self.config.tokenizer.eos_token
        found = self.tokenizer.token_to_id(name) if name else None
        return found if found is not None else self.info.eos_id


def load_checkpoint(path: str | Path, device: torch.device | None = None) -> LoadedCheckpoint:
    """Resolve `path` (step folder or run directory) and load it, full or adapter, through
    fine-tuning's `load_model` (checksums verified, an adapter's base checked)."""
    if str(path).startswith((HF_PREFIX, GGUF_PREFIX)):
        return _load_pretrained(str(path), device)
    step_dir = checkpoint.resolve(path)
    model, config, tokenizer, meta = load_model(step_dir)
    if device is not None:
        model.to(device)
    return LoadedCheckpoint(
        step_dir, config, meta, model, tokenizer, tokenizer_info(tokenizer, model.family.tokenizer)
    )


def _load_pretrained(path: str, device: torch.device | None) -> LoadedCheckpoint:
    """A Hugging Face folder or GGUF file, so a downloaded model is measured (and exported)
    without a training run: with its LM head (scored and generating as its family's native
    objective, a chat model through its template), else the bare backbone (embeddings)."""
    base = read_base(path)
    fam = family(base.model_config.family)
    has_lm = any(k.startswith(f"heads.{fam.lm_head}.") for k in base.weights)
    heads = (fam.lm_head,) if has_lm else ()
    model = build_model(base.model_config, heads)
    load_base_weights(model, base.weights, path, heads)
    if device is not None:
        model.to(device)
    tokenizer_config = base.tokenizer_config or TokenizerConfig()
    config = RunConfig(command="evaluate", model=base.model_config, tokenizer=tokenizer_config)
    info = tokenizer_info(base.tokenizer, fam.tokenizer)
    meta = {"objective": fam.native_objective if heads else "none", "step": None}
    meta |= {"family": fam.name, "heads": list(heads), "method": "full"}
    folder = Path(path.split(":", 1)[1])
    return LoadedCheckpoint(folder, config, meta, model.eval(), base.tokenizer, info)
