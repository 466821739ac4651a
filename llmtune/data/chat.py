"""Chat templates: render a list of {role, content} messages to the text a chat model was trained
on, with the model's own Jinja template (from tokenizer_config.json or GGUF metadata).

Templates come with downloaded models, so they run in Jinja's immutable sandbox: a template
can format text but cannot reach Python objects, files or imports.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from llmtune.config.schema import TokenizerConfig
from llmtune.data.labelled import IGNORE
from llmtune.errors import DataError


def _raise(message: str) -> None:
    # templates call raise_exception(...) to reject a conversation (e.g. roles out of order)
    raise TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, **_: Any) -> str:
    # Jinja's own tojson escapes HTML characters, which chat templates do not expect
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent)


@functools.lru_cache(maxsize=8)
def _compile(template: str) -> Any:
    # trim_blocks / lstrip_blocks: the whitespace rules chat templates are written for
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def render_chat(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = False,
    special_tokens: Mapping[str, str | None] | None = None,
) -> str:
    """The conversation as text. `special_tokens` fills the template's bos_token, eos_token, ...;
    `add_generation_prompt` appends the opening of an assistant turn."""
    if not template:
        raise DataError("the model has no chat template; use plain prompts instead")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not {"role", "content"} <= set(m):
            raise DataError(f"chat message {i} must be an object with 'role' and 'content'")
    try:
        return _compile(template).render(
            messages=[dict(m) for m in messages],
            add_generation_prompt=add_generation_prompt,
            **{k: v for k, v in (special_tokens or {}).items() if v is not None},
        )
    except TemplateError as exc:
        raise DataError(f"the chat template refused the conversation: {exc}") from None


def assistant_spans(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    special_tokens: Mapping[str, str | None] | None = None,
) -> tuple[str, list[tuple[int, int]]]:
    """The conversation's text and the character span of each assistant turn: from the end of
    the template's assistant opening to the end of the turn (its closing markup included, so
    the model learns to stop). Needs a template that renders a conversation as the sum of its
    turns, as chat templates do; one that rewrites earlier turns is refused."""
    text = render_chat(template, messages, False, special_tokens)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        opened = render_chat(template, messages[:i], True, special_tokens)
        closed = render_chat(template, messages[: i + 1], False, special_tokens)
        if not (closed.startswith(opened) and text.startswith(closed)):
            raise DataError(
                f"the chat template renders turn {i} differently once later turns follow; "
                "training on assistant turns needs a template that appends turns"
            )
        spans.append((len(opened), len(closed)))
    return text, spans


def in_spans(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[bool]:
    """Per token (its character offsets): whether it starts inside one of `spans`."""
    return [any(lo <= start < hi for lo, hi in spans) for start, _ in offsets]


def as_messages(value: Any, row: int) -> list[dict[str, Any]]:
    """A `messages` cell: a list of {role, content} objects (or its JSON text)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = None
    if not isinstance(value, list) or not value:
        raise DataError(f"row {row}: messages must be a non-empty list of {{role, content}}")
    return [dict(m) if isinstance(m, Mapping) else m for m in value]


def encode_chat(
    tok: Tokenizer,
    template: str,
    conversations: Sequence[Sequence[Mapping[str, Any]]],
    special_tokens: Mapping[str, str | None],
    max_len: int,
) -> tuple[list[list[int]], list[list[int]], dict[int, int]]:
    """(ids, targets, overlong) of each conversation laid out by the chat template: the ids are
    what transformers' apply_chat_template gives (the rendered text tokenized without added
    specials); targets hold the assistant turns' tokens and -100 elsewhere; rows longer than
    max_len are cut (their full lengths in `overlong`, by position)."""
    texts, spans = [], []
    for conversation in conversations:
        text, turns = assistant_spans(template, conversation, special_tokens)
        texts.append(text)
        spans.append(turns)
    ids, targets, overlong = [], [], {}
    for i, (e, turns) in enumerate(zip(tok.encode_batch(texts, add_special_tokens=False), spans)):
        inside = in_spans(e.offsets, turns)
        row = [t if keep else IGNORE for t, keep in zip(e.ids, inside)]
        if len(e.ids) > max_len:
            overlong[i] = len(e.ids)
        ids.append(e.ids[:max_len])
        targets.append(row[:max_len])
    return ids, targets, overlong


def chat_model(tokenizer: TokenizerConfig | None) -> TokenizerConfig | None:
    """The run's tokenizer settings when they carry a chat template (a chat model), else None:
    what sft and the preference objectives lay rows out with."""
    return tokenizer if tokenizer is not None and tokenizer.chat_template else None


def exchange(instruction: object, response: object) -> list[dict[str, str]]:
    """One instruction/response row as a conversation: a user turn and the assistant's answer."""
    return [
        {"role": "user", "content": str(instruction)},
        {"role": "assistant", "content": str(response)},
    ]


def specials(chat: TokenizerConfig) -> dict[str, str | None]:
    """The special-token names a chat template reads, from the run's tokenizer settings."""
    return {"bos_token": chat.bos_token or None, "eos_token": chat.eos_token or None}


def chat_prompt(chat: TokenizerConfig, text: str) -> str:
    """`text` as a user turn followed by the opening of the assistant's answer."""
    messages = [{"role": "user", "content": text}]
    return render_chat(chat.chat_template, messages, True, specials(chat))
