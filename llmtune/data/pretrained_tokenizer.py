"""A pretrained model's tokenizer plus what chat needs besides it (bos/eos/pad token names and
the chat template), read from a Hugging Face folder (tokenizer.json, tokenizer_config.json,
chat_template.jinja) or rebuilt from GGUF metadata (gguf_tokenizer.py); and written back as a
tokenizer_config.json body, so a checkpoint or an export keeps them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from llmtune.errors import CheckpointError

TOKENIZER_FILE, CONFIG_FILE, TEMPLATE_FILE = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
)
_ROLES = ("bos_token", "eos_token", "pad_token")


@dataclass(frozen=True)
class PretrainedTokenizer:
    """A tokenizer with its special-token names and chat template ("" when it has none)."""

    tokenizer: Tokenizer
    bos_token: str | None = None
    eos_token: str | None = None  # for a chat model: the end-of-turn token generation stops at
    pad_token: str | None = None
    chat_template: str = ""
    add_bos_token: bool = False  # informational: tokenizer.json's post-processor adds it

    def special_tokens(self) -> dict[str, str | None]:
        """The names chat templates read (bos_token, eos_token, pad_token)."""
        return {role: getattr(self, role) for role in _ROLES}

    def token_id(self, role: str) -> int | None:
        """The id of bos_token / eos_token / pad_token, None when the tokenizer has none."""
        token = getattr(self, role)
        return None if token is None else self.tokenizer.token_to_id(token)

    def to_config(self) -> dict[str, Any]:
        """A tokenizer_config.json body transformers reads (with tokenizer.json beside it)."""
        out: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast"}
        out |= {role: token for role, token in self.special_tokens().items() if token is not None}
        out["add_bos_token"] = self.add_bos_token
        if self.chat_template:
            out["chat_template"] = self.chat_template
        return out


def _token_name(value: Any) -> str | None:
    # tokenizer_config.json writes a special token as a string or as an AddedToken object
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _template(config: dict, folder: Path) -> str:
    """transformers 4.43+ may keep the template in chat_template.jinja; older files hold a
    string, or a list of named templates of which "default" is the one chat uses."""
    if (folder / TEMPLATE_FILE).is_file():
        return (folder / TEMPLATE_FILE).read_text()
    template = config.get("chat_template") or ""
    if isinstance(template, list):
        named = {t.get("name"): t.get("template", "") for t in template if isinstance(t, dict)}
        template = named.get("default", "")
    return template if isinstance(template, str) else ""


def read_hf_tokenizer(folder: Path) -> PretrainedTokenizer:
    """The tokenizer of a Hugging Face model folder; tokenizer_config.json is optional."""
    path = folder / TOKENIZER_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {TOKENIZER_FILE} (the fast tokenizer file)")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on a malformed file
        raise CheckpointError(f"{path}: unreadable ({str(exc).splitlines()[0]})") from None
    config: dict = {}
    if (folder / CONFIG_FILE).is_file():
        try:
            config = json.loads((folder / CONFIG_FILE).read_text())
        except ValueError as exc:
            raise CheckpointError(f"{folder / CONFIG_FILE}: not JSON ({exc})") from None
    names = {role: _token_name(config.get(role)) for role in _ROLES}
    for role, token in names.items():
        if token is not None and tokenizer.token_to_id(token) is None:
            raise CheckpointError(
                f"{folder / CONFIG_FILE}: {role} {token!r} is not in the vocabulary"
            )
    return PretrainedTokenizer(
        tokenizer,
        **names,
        chat_template=_template(config, folder),
        add_bos_token=bool(config.get("add_bos_token", False)),
    )
