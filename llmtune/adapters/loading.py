"""`load_model`: the one way to turn any llmtune checkpoint (full or adapter) into a ready model."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from llmtune import checkpoint
from llmtune.adapters.base_model import load_base_weights, read_base
from llmtune.adapters.method import apply_method
from llmtune.config.load import load_yaml
from llmtune.config.schema import RunConfig
from llmtune.models import LanguageModel, build_model


def load_model(path: str | Path) -> tuple[LanguageModel, RunConfig, Tokenizer, dict]:
    """(model in eval mode on the CPU, run config, tokenizer, meta) of a checkpoint.

    `path` is a step folder or a run directory (its `best`, else `latest`). Every file is
    checked against meta.json. meta.json keys: "heads" (built), "objective", "family",
    "labels" (class names, index = class id; seq_cls/token_cls only), "method" (full,
    freeze, lora, prefix, prompt). Adapter checkpoints (lora/prefix/prompt) hold only their
    trained weights and "base": {"path": <step folder or hf:<folder>>, "sha256": <of its
    weights file>}: the base is loaded first (refused if its weights changed), the method
    applied, then the adapter's weights. LoRA stays unmerged; `llmtune.adapters.merge_lora`
    folds it into plain Linears (for export).
    """
    step_dir = checkpoint.resolve(path)
    meta = checkpoint.verify(step_dir)
    config = load_yaml(step_dir / checkpoint.CONFIG)
    tokenizer = Tokenizer.from_file(str(step_dir / checkpoint.TOKENIZER))
    labels = meta.get("labels") or []
    model = build_model(config.model, meta.get("heads", []), len(labels))
    weights = checkpoint.load_weights(step_dir)
    base_ref = meta.get("base")
    if not base_ref:
        checkpoint.load_into(model, weights, step_dir)
    else:
        base = read_base(base_ref["path"], expected_sha256=base_ref["sha256"])
        load_base_weights(model, base.weights, base_ref["path"], reuse_heads=tuple(model.heads))
        apply_method(model, config.method, config.seed)
        checkpoint.load_into(model, weights, step_dir, trainable_only=True)
    return model.eval(), config, tokenizer, meta
