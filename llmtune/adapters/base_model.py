"""Where fine-tuning starts: the weights of an llmtune checkpoint, a Hugging Face folder
(`hf:<dir>`, through the family's key map) or a llama.cpp file (`gguf:<file>`), loaded strictly
into a new model's backbone, with a table of what was loaded, created and dropped."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from safetensors import SafetensorError
from safetensors.torch import load_file
from tokenizers import Tokenizer

from llmtune import checkpoint
from llmtune.config.load import load_yaml
from llmtune.config.schema import ModelConfig, RunConfig, TokenizerConfig
from llmtune.data.gguf_tokenizer import tokenizer_from_gguf
from llmtune.data.pretrained_tokenizer import TOKENIZER_FILE, PretrainedTokenizer, read_hf_tokenizer
from llmtune.data.tokenizer import load_tokenizer_file
from llmtune.errors import CheckpointError
from llmtune.models import family, from_hf_state_dict, heads_from_hf, model_config_from_hf
from llmtune.models.llama_gguf import (
    gguf_metadata,
    hf_state_dict_from_gguf,
    llama_config_from_gguf,
    open_gguf,
)

HF_PREFIX, GGUF_PREFIX = "hf:", "gguf:"
SINGLE_FILE, INDEX_FILE, PICKLE_FILE = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
)


@dataclass
class Base:
    """A model to start from: its architecture, tokenizer and weights under our key names."""

    model_config: ModelConfig
    tokenizer: Tokenizer
    weights: dict[str, torch.Tensor]
    ref: dict  # {"path", "sha256"}: how an adapter checkpoint names this base
    run_config: RunConfig | None = None  # llmtune bases only
    # how a run from a Hugging Face folder or GGUF file records its tokenizer (chat template,
    # bos/eos names); an llmtune base's is its run config's
    tokenizer_config: TokenizerConfig | None = None
    meta: dict = field(default_factory=dict)  # the base checkpoint's meta.json ({} for hf)


def read_base(init_from: str, expected_sha256: str = "") -> Base:
    """The base named by `init_from` (a step folder, a run dir, or hf:<folder>).

    With `expected_sha256` (an adapter checkpoint's record) a changed weights file is refused.
    """
    if init_from.startswith(HF_PREFIX):
        base = _read_hf(Path(init_from[len(HF_PREFIX) :]).expanduser())
    elif init_from.startswith(GGUF_PREFIX):
        base = _read_gguf(Path(init_from[len(GGUF_PREFIX) :]).expanduser())
    else:
        base = _read_llmtune(init_from)
    if expected_sha256 and base.ref["sha256"] != expected_sha256:
        raise CheckpointError(
            f"{base.ref['path']}: the base weights changed since the adapter was trained "
            "(sha256 differs); restore that base checkpoint or fine-tune again"
        )
    return base


def _read_llmtune(path: str) -> Base:
    step_dir = checkpoint.resolve(path).resolve()
    meta = checkpoint.verify(step_dir)
    if meta.get("base"):
        raise CheckpointError(
            f"init_from={path}: an adapter checkpoint ({meta.get('method')}); start from its "
            f"base ({meta['base']['path']}) or from a full (method=full/freeze) checkpoint"
        )
    config = load_yaml(step_dir / checkpoint.CONFIG)
    tokenizer = Tokenizer.from_file(str(step_dir / checkpoint.TOKENIZER))
    weights_path = step_dir / checkpoint.WEIGHTS
    ref = {"path": str(step_dir), "sha256": checkpoint.sha256_file(weights_path)}
    weights = checkpoint.load_weights(step_dir)
    return Base(config.model, tokenizer, weights, ref, config, meta)


def _unreadable(path: Path, exc: BaseException) -> CheckpointError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return CheckpointError(f"{path}: unreadable ({first})")


def _weight_files(folder: Path) -> list[Path]:
    """model.safetensors, the shards model.safetensors.index.json lists, or pytorch_model.bin."""
    index = folder / INDEX_FILE
    if (folder / SINGLE_FILE).is_file():
        return [folder / SINGLE_FILE]
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{index}: not a safetensors index ({exc!r})") from None
        for path in (folder / name for name in names):
            if not path.is_file():
                raise CheckpointError(f"{path}: missing shard listed in {INDEX_FILE}")
        return [folder / name for name in names]
    if (folder / PICKLE_FILE).is_file():
        return [folder / PICKLE_FILE]
    raise CheckpointError(f"{folder}: no {SINGLE_FILE}, {INDEX_FILE} or {PICKLE_FILE}")


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a Hugging Face folder's weights (sharded or not); a missing or
    unreadable file is a CheckpointError naming it."""
    out: dict[str, torch.Tensor] = {}
    for path in _weight_files(folder):
        try:
            if path.suffix == ".safetensors":
                out.update(load_file(path))
            else:  # weights_only: a downloaded pickle must not run code
                out.update(torch.load(path, map_location="cpu", weights_only=True))
        except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
            raise _unreadable(path, exc) from None
    return out


def _read_hf(folder: Path) -> Base:
    """A Hugging Face folder: config.json, weights (sharded or not), tokenizer files."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"init_from=hf:{folder}: no config.json; point it at a model folder")
    try:
        config_json = json.loads(config_path.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{config_path}: not JSON ({exc})") from None
    model_config = model_config_from_hf(config_json)
    files = _weight_files(folder)
    weights = from_hf_state_dict(read_hf_weights(folder), model_config, heads_from_hf(config_json))
    digest = checkpoint.sha256_file(files[0]) if len(files) == 1 else _digest(files)
    ref = {"path": f"{HF_PREFIX}{folder.resolve()}", "sha256": digest}
    if not (folder / TOKENIZER_FILE).is_file():  # a BERT folder may hold only vocab.txt
        tokenizer = load_tokenizer_file(str(folder), family(model_config.family).tokenizer)
        return Base(model_config, tokenizer, weights, ref, tokenizer_config=_file(folder))
    pretrained = read_hf_tokenizer(folder)
    tok_config = _file(folder, pretrained)
    return Base(model_config, pretrained.tokenizer, weights, ref, tokenizer_config=tok_config)


def _read_gguf(path: Path) -> Base:
    """A llama.cpp GGUF file: architecture, dequantized weights and tokenizer."""
    if not path.is_file():
        raise CheckpointError(f"init_from=gguf:{path}: no such file; point it at a .gguf file")
    reader = open_gguf(path)
    model_config = llama_config_from_gguf(reader)
    hf_sd = hf_state_dict_from_gguf(reader, model_config)
    weights = from_hf_state_dict(hf_sd, model_config, ("lm",))
    pretrained = tokenizer_from_gguf(gguf_metadata(reader))
    ref = {"path": f"{GGUF_PREFIX}{path.resolve()}", "sha256": checkpoint.sha256_file(path)}
    tok_config = _file(path, pretrained)
    return Base(model_config, pretrained.tokenizer, weights, ref, tokenizer_config=tok_config)


def _file(path: Path, pretrained: PretrainedTokenizer | None = None) -> TokenizerConfig:
    """tokenizer=file from `path`, with a pretrained tokenizer's chat template and names."""
    if pretrained is None:
        return TokenizerConfig(kind="file", path=str(path.resolve()))
    if "${" in pretrained.chat_template:  # config.yaml would read it as an interpolation
        raise CheckpointError(f"{path}: its chat template holds '${{', which llmtune cannot keep")
    return TokenizerConfig(
        kind="file",
        path=str(path.resolve()),
        chat_template=pretrained.chat_template,
        bos_token=pretrained.bos_token or "",
        eos_token=pretrained.eos_token or "",
    )


def _digest(files: list[Path]) -> str:
    """One SHA-256 over several weight files (the shards' own digests, in order)."""
    return hashlib.sha256("".join(checkpoint.sha256_file(p) for p in files).encode()).hexdigest()


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


def _check_backbone(model: torch.nn.Module, weights: dict, expected: dict, source: str) -> None:
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
    _check_backbone(model, weights, expected, source)
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
