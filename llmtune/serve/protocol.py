"""The request bodies `llmtune serve` accepts (OpenAI's completions, chat completions and
embeddings, and a classify route) and the response objects it sends back, as OpenAI lays
them out. A field llmtune does not implement is refused (400), never silently ignored."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Generation.stop_reason -> OpenAI's finish_reason (a full context is a length limit too).
FINISH = {"eos": "stop", "stop": "stop", "max_new_tokens": "length", "context": "length"}


class Strict(BaseModel):
    """Unknown fields are refused; "5" is not the number 5."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Sampling(Strict):
    """What every generating request shares (OpenAI's names and defaults; top_k is vLLM's)."""

    model: str = ""  # one model per server: accepted and echoed, never switches models
    max_tokens: int = Field(16, ge=0)
    temperature: float = Field(1.0, ge=0.0, le=2.0)  # 0 = greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)  # 0 = every token
    stop: str | list[str] | None = None  # the text ends before the first of these
    stream: bool = False  # server-sent events, one per new piece of text
    n: Literal[1] = 1  # one choice per prompt
    user: str = ""

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [s for s in ([self.stop] if isinstance(self.stop, str) else self.stop) if s]


class CompletionRequest(Sampling):
    prompt: str | list[str]


class Message(Strict):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)


class EmbeddingRequest(Strict):
    model: str = ""
    input: str | list[str]
    encoding_format: Literal["float"] = "float"
    user: str = ""


class ClassifyRequest(Strict):
    model: str = ""
    input: str | list[str]
    text_pair: str | list[str] | None = None  # a second text per input (pair classifiers)


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def error_body(message: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def envelope(kind: str, rid: str, model: str, choices: list[dict]) -> dict[str, Any]:
    """The frame every completion response and stream chunk shares."""
    return {
        "id": rid,
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }


def text_choice(index: int, text: str, finish: str | None) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}


def chat_choice(index: int, text: str, finish: str | None) -> dict[str, Any]:
    message = {"role": "assistant", "content": text}
    return {"index": index, "message": message, "logprobs": None, "finish_reason": finish}


def chat_delta(index: int, delta: dict[str, str], finish: str | None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
