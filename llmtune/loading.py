"""The one loader used by evaluate, export, finetune and resume: an llmtune checkpoint (step
folder or run directory, read as a closed box by checkpoint.py) or a model in another format
named by a prefix (foreign.SOURCES: hf:, gguf:), turned into a model, config and tokenizer."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from tokenizers import Tokenizer

from llmtune import checkpoint
from llmtune.adapters.method import apply_method
from llmtune.config.schema import ObjectiveConfig, RunConfig, TokenizerConfig
from llmtune.data import TokenizerInfo, tokenizer_info
from llmtune.errors import CheckpointError, UserError
from llmtune.foreign import SOURCES, Base
from llmtune.models import LanguageModel, build_model, family
from llmtune.objectives import OBJECTIVES

# what a foreign folder's heads make it, for evaluate (a bare backbone: embeddings only)
_OBJECTIVE_OF_HEADS = {("lm",): "clm", ("mlm",): "mlm", ("mlm", "nsp"): "mlm_nsp"}


@dataclass
class LoadedCheckpoint:
    """Everything evaluate and export need: the model in eval mode, its run config, tokenizer,
    special-token ids and meta.json (for a foreign folder: what its heads make it)."""

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


def _foreign(source: str) -> tuple[Callable[[Path], Base], Path] | None:
    for prefix, reader in SOURCES.items():
        if source.startswith(prefix):
            return reader, Path(source[len(prefix) :]).expanduser()
    return None


def folders_of(source: str | Path) -> list[Path]:
    """The folders loading `source` reads: a foreign folder; or an llmtune step folder, its
    run folder and an adapter's base (export must never write into or over one of them)."""
    foreign = _foreign(str(source))
    if foreign:
        return [foreign[1]]
    step_dir = checkpoint.resolve(source)
    folders = [Path(source).expanduser(), step_dir]
    if step_dir.parent.name == "checkpoints":
        folders.append(step_dir.parent.parent)
    base = checkpoint.read_meta(step_dir).get("base")
    return folders + (folders_of(base["path"]) if base else [])


def _read_llmtune(path: str) -> Base:
    step_dir = checkpoint.resolve(path).resolve()
    meta = checkpoint.verify(step_dir)
    if meta.get("base"):
        raise CheckpointError(
            f"init_from={path}: an adapter checkpoint ({meta.get('method')}); start from its "
            f"base ({meta['base']['path']}) or from a full (method=full/freeze) checkpoint"
        )
    config = checkpoint.read_config(step_dir)
    tokenizer = checkpoint.read_tokenizer(step_dir)
    ref = {"path": str(step_dir), "sha256": meta["files"][checkpoint.WEIGHTS]}
    weights = checkpoint.load_weights(step_dir)
    return Base(config.model, tokenizer, weights, ref, config, meta)


def read_base(source: str, expected_sha256: str = "") -> Base:
    """The base named by `source` (a step folder, a run dir, or <prefix><folder>).

    With `expected_sha256` (an adapter checkpoint's record) a changed weights file is refused.
    """
    foreign = _foreign(source)
    base = foreign[0](foreign[1]) if foreign else _read_llmtune(source)
    if expected_sha256 and base.ref["sha256"] != expected_sha256:
        raise CheckpointError(
            f"{base.ref['path']}: the base weights changed since the adapter was trained "
            "(sha256 differs); restore that base checkpoint or fine-tune again"
        )
    return base


def _info(tokenizer: Tokenizer, family_name: str, where: Path) -> TokenizerInfo:
    try:
        return tokenizer_info(tokenizer, family(family_name).tokenizer)
    except UserError as exc:  # name the checkpoint's file, not the tokenizer.path setting
        raise CheckpointError(f"{where}: {str(exc).removeprefix('tokenizer.path: ')}") from None


def _load_llmtune(step_dir: Path) -> LoadedCheckpoint:
    """A full or adapter checkpoint (see load_checkpoint)."""
    meta = checkpoint.verify(step_dir)
    config = checkpoint.read_config(step_dir)
    tokenizer = checkpoint.read_tokenizer(step_dir)
    info = _info(tokenizer, config.model.family, step_dir / checkpoint.TOKENIZER)
    labels = meta.get("labels") or []
    try:
        model = build_model(config.model, meta.get("heads", []), len(labels))
    except UserError as exc:
        raise CheckpointError(f"{step_dir / checkpoint.META}: {exc}") from None
    weights = checkpoint.load_weights(step_dir)
    base_ref = meta.get("base")
    if not base_ref:
        load_into(model, weights, step_dir)
    else:
        base = read_base(base_ref["path"], expected_sha256=base_ref["sha256"])
        load_base_weights(model, base.weights, base_ref["path"], reuse_heads=tuple(model.heads))
        apply_method(model, config.method, config.seed)
        load_into(model, weights, step_dir, trainable_only=True)
    return LoadedCheckpoint(step_dir, config, meta, model.eval(), tokenizer, info)


def _load_foreign(source: str, base: Base, folder: Path) -> LoadedCheckpoint:
    """A foreign folder with the heads its weights hold: a classifier evaluates as one."""
    model = build_model(base.model_config, base.heads, len(base.labels))
    rows = load_base_weights(model, base.weights, source, base.heads)
    # a head (or the pooler a classifier reads) the folder lacks would score at random
    needs_pooler = bool({"seq_cls", "nsp"} & set(base.heads))
    for action, part, _ in rows:
        if action == "created" and (part != "backbone.pooler" or needs_pooler):
            raise CheckpointError(
                f"{source}: its weights hold no {part}; nothing to evaluate it by"
            )
    objective = (
        next((h for h in base.heads if h in ("seq_cls", "token_cls")), None)
        or _OBJECTIVE_OF_HEADS.get(base.heads)
        or "none"
    )
    # a registered objective's own config class (its keys at their defaults); none: bare
    settings = OBJECTIVES[objective].config if objective in OBJECTIVES else ObjectiveConfig
    config = RunConfig(
        command="evaluate",
        model=base.model_config,
        tokenizer=base.tokenizer_config or TokenizerConfig(),
        objective=settings(name=objective),
    )
    meta = {"objective": objective, "heads": list(base.heads), "step": None}
    meta |= {"labels": base.labels} if base.labels else {}
    info = _info(base.tokenizer, base.model_config.family, folder)
    return LoadedCheckpoint(folder, config, meta, model.eval(), base.tokenizer, info)


def load_checkpoint(source: str | Path, device: torch.device | None = None) -> LoadedCheckpoint:
    """The model of `source`, in eval mode: an llmtune step folder or run directory (its
    `best`, else `latest`), or <prefix><folder> (SOURCES, e.g. hf:<folder>).

    Every file of an llmtune checkpoint is checked against meta.json. meta.json keys: "heads"
    (built), "objective", "family", "labels" (class names, index = class id), "method".
    Adapter checkpoints (lora/prefix/prompt) hold only their trained weights and "base":
    {"path", "sha256" of its weights}: the base is loaded first (refused if its weights
    changed), the method applied, then the adapter's weights. LoRA stays unmerged;
    `llmtune.adapters.merge_lora` folds it into plain Linears (for export).
    """
    foreign = _foreign(str(source))
    if foreign:
        loaded = _load_foreign(str(source), read_base(str(source)), foreign[1])
    else:
        loaded = _load_llmtune(checkpoint.resolve(source))
    if device is not None:
        loaded.model.to(device)
    return loaded


def load_into(
    model: torch.nn.Module,
    weights: dict[str, torch.Tensor],
    source: Path,
    trainable_only: bool = False,
) -> None:
    """Load weights strictly: only tied aliases may be absent; names and shapes must match.

    `trainable_only`: the weights are exactly the model's trainable parameters (an adapter).
    """
    expected = model.state_dict()
    if trainable_only:
        keep = {name for name, p in model.named_parameters() if p.requires_grad}
        expected = {k: v for k, v in expected.items() if k in keep}
    tied = set(model.tied_parameter_names())
    missing = sorted(set(expected) - set(weights) - tied)
    unexpected = sorted(set(weights) - set(expected))
    wrong = sorted(k for k in set(weights) & set(expected) if weights[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        parts = [
            f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", wrong))
            if keys
        ]
        raise CheckpointError(
            f"{source}: weights do not fit this model ({'; '.join(parts)}); "
            "is it a checkpoint of another architecture?"
        )
    model.load_state_dict(weights, strict=False)


def _mismatch_table(source: str, missing: list, unexpected: list, wrong: list) -> Table:
    table = Table(title=f"weights of {source} do not fit the model", show_lines=False)
    for column in ("problem", "key", "checkpoint shape", "model shape"):
        table.add_column(column)
    for key in missing[:20]:
        table.add_row("missing", key, "-", "")
    for key in unexpected[:20]:
        table.add_row("unexpected", key, "", "-")
    for key, got, want in wrong[:20]:
        table.add_row("mismatched", key, str(tuple(got)), str(tuple(want)))
    return table


def _check_backbone(weights: dict, expected: dict, source: str) -> None:
    """Strict on the backbone (only BERT's pooler may be absent); a table, then exit code 2."""
    want = {k for k in expected if k.startswith("backbone.")}
    have = {k for k in weights if k.startswith("backbone.")}
    missing = sorted(k for k in want - have if not k.startswith("backbone.pooler."))
    unexpected = sorted(have - want)
    wrong = sorted(
        (k, weights[k].shape, expected[k].shape)
        for k in want & have
        if weights[k].shape != expected[k].shape
    )
    if missing or unexpected or wrong:
        Console(stderr=True).print(_mismatch_table(source, missing, unexpected, wrong))
        raise CheckpointError(
            f"{source}: weights do not fit the model ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(wrong)} mismatched keys; see the table above)"
        )


def load_base_weights(
    model: torch.nn.Module, weights: dict, source: str, reuse_heads: Collection[str]
) -> list[tuple[str, str, int]]:
    """Load the backbone strictly and the heads in `reuse_heads` that fit; new heads keep
    their initialisation. Returns rows (action, part, parameters) for `load_table`."""
    tied = set(model.tied_parameter_names())
    expected = {k: v for k, v in model.state_dict().items() if k not in tied}
    _check_backbone(weights, expected, source)
    chosen = {k: weights[k] for k in expected if k.startswith("backbone.") and k in weights}
    rows = [("loaded", "backbone", sum(t.numel() for t in chosen.values()))]
    pooler = [k for k in expected if k.startswith("backbone.pooler.") and k not in weights]
    if pooler:
        rows.append(("created", "backbone.pooler", sum(expected[k].numel() for k in pooler)))
    for head in model.heads:
        keys = [k for k in expected if k.startswith(f"heads.{head}.")]
        size = sum(expected[k].numel() for k in keys)
        fits = all(k in weights and weights[k].shape == expected[k].shape for k in keys)
        if head in reuse_heads and fits:
            chosen.update({k: weights[k] for k in keys})
            rows.append(("loaded", f"head {head}" + ("" if keys else " (tied)"), size))
        else:
            rows.append(("created", f"head {head}", size))
    for head in sorted({k.split(".")[1] for k in weights if k.startswith("heads.")}):
        if head not in model.heads:
            size = sum(t.numel() for k, t in weights.items() if k.startswith(f"heads.{head}."))
            rows.append(("dropped", f"head {head}", size))
    model.load_state_dict(chosen, strict=False)
    return rows


def load_table(rows: list[tuple[str, str, int | str]], source: str) -> Table:
    """Rows (action, part, parameters); a str in the last column is shown as it is."""
    table = Table(title="weights from the base model", caption=source)
    for column in ("", "part", "parameters"):
        table.add_column(column)
    for action, part, size in rows:
        if isinstance(size, int):
            size = f"{size / 1e6:.2f}M" if size >= 1e4 else str(size)
        table.add_row(action, part, size)
    return table
