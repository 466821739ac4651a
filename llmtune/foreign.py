"""Models in other formats as bases to start from (`Base`): a Hugging Face folder (`hf:`;
config.json, safetensors weights, sharded or not, or a pytorch_model.bin; tokenizer files with
their chat template) or a llama.cpp GGUF file (`gguf:`). SOURCES maps each prefix to its reader;
loading.py is the one place that uses them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from tokenizers import Tokenizer

from llmtune import checkpoint
from llmtune.config.build import section_fields
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
    meta: dict = field(default_factory=dict)  # the base checkpoint's meta.json ({} otherwise)
    heads: tuple[str, ...] = ()  # a foreign folder's heads (its weights hold them)
    labels: list = field(default_factory=list)  # a foreign classifier's class names
    # how a run from a foreign model records its tokenizer (chat template, bos/eos names)
    tokenizer_config: TokenizerConfig | None = None


def _read_json(path: Path) -> dict:
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(body, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    return body


def _checked(config: ModelConfig, path: Path) -> ModelConfig:
    """A config.json's values of the types the model needs (a string n_layer is refused)."""
    for name, kind in section_fields(type(config)).items():
        value = getattr(config, name)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if (kind in (int, str, bool) and not isinstance(value, kind)) or (
            kind is float and not number
        ):
            raise CheckpointError(f"{path}: {name}={value!r} is not a {kind.__name__}")
    return config


def _hf_labels(config_json: dict, heads: tuple[str, ...], path: Path) -> list:
    if not {"seq_cls", "token_cls"} & set(heads):
        return []
    names = config_json.get("id2label") or {}
    try:
        return [names[k] for k in sorted(names, key=int)]
    except (TypeError, ValueError):
        raise CheckpointError(f"{path}: id2label must map class ids to names") from None


def weight_files(folder: Path) -> list[Path]:
    """model.safetensors, the shards model.safetensors.index.json lists, or pytorch_model.bin."""
    index = folder / INDEX_FILE
    if (folder / SINGLE_FILE).is_file():
        return [folder / SINGLE_FILE]
    if index.is_file():
        try:
            names = sorted(set(_read_json(index)["weight_map"].values()))
        except (KeyError, TypeError, AttributeError) as exc:
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
    for path in weight_files(folder):
        try:
            if path.suffix == ".safetensors":
                out.update(load_file(path))
            else:  # weights_only: a downloaded pickle must not run code
                out.update(torch.load(path, map_location="cpu", weights_only=True))
        except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{path}: unreadable ({first[:200]})") from None
    return out


def _digest(files: list[Path]) -> str:
    """The weights' SHA-256 (of the one file; of the shards' own digests, in order)."""
    if len(files) == 1:
        return checkpoint.sha256_file(files[0])
    return hashlib.sha256("".join(checkpoint.sha256_file(p) for p in files).encode()).hexdigest()


def _tokenizer_config(path: Path, pretrained: PretrainedTokenizer | None) -> TokenizerConfig:
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


def _read_hf(folder: Path) -> Base:
    """A Hugging Face folder: config.json, weights, tokenizer.json (or a BERT's vocab.txt)."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{HF_PREFIX}{folder}: no config.json; point it at a model folder")
    config_json = _read_json(config_path)
    model_config = _checked(model_config_from_hf(config_json), config_path)
    heads = heads_from_hf(config_json)
    files = weight_files(folder)
    weights = from_hf_state_dict(read_hf_weights(folder), model_config, heads)
    if (folder / TOKENIZER_FILE).is_file():
        pretrained = read_hf_tokenizer(folder)
        tokenizer = pretrained.tokenizer
    else:
        pretrained = None
        tokenizer = load_tokenizer_file(str(folder), family(model_config.family).tokenizer)
    ref = {"path": f"{HF_PREFIX}{folder.resolve()}", "sha256": _digest(files)}
    labels = _hf_labels(config_json, heads, config_path)
    tok_config = _tokenizer_config(folder, pretrained)
    return Base(
        model_config,
        tokenizer,
        weights,
        ref,
        heads=heads,
        labels=labels,
        tokenizer_config=tok_config,
    )


def _read_gguf(path: Path) -> Base:
    """A llama.cpp GGUF file: architecture, weights (dequantized to fp32) and tokenizer."""
    reader = open_gguf(path)
    model_config = llama_config_from_gguf(reader)
    hf_sd = hf_state_dict_from_gguf(reader, model_config)
    weights = from_hf_state_dict(hf_sd, model_config, ("lm",))
    pretrained = tokenizer_from_gguf(gguf_metadata(reader))
    ref = {"path": f"{GGUF_PREFIX}{path.resolve()}", "sha256": checkpoint.sha256_file(path)}
    tok_config = _tokenizer_config(path, pretrained)
    return Base(
        model_config, pretrained.tokenizer, weights, ref, heads=("lm",), tokenizer_config=tok_config
    )


# Prefix -> reader of a model in another format. No prefix: an llmtune checkpoint.
SOURCES: dict[str, Callable[[Path], Base]] = {HF_PREFIX: _read_hf, GGUF_PREFIX: _read_gguf}
