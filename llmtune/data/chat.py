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
