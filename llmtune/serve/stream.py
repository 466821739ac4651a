"""Text of a completion as its tokens arrive: what can be sent so far (never half a
character, never the start of a stop string that may yet complete), and where it ends."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def sse(value: Any) -> str:
    """One server-sent event carrying `value` as JSON."""
    return f"data: {json.dumps(value, ensure_ascii=False)}\n\n"


class TextStream:
    """Tokens in, text out: `push` gives the newly sendable text, `final` the rest."""

    def __init__(self, decode: Callable[[list[int]], str], stops: list[str]) -> None:
        self.decode, self.stops = decode, stops
        self.ids: list[int] = []
        self.sent = 0  # characters of the text already handed out
        self.stopped = False  # a stop string was found: the text ends before it

    def extend(self, ids: list[int]) -> None:
        for token in ids:
            self.push(token, hold=False)

    def push(self, token: int, hold: bool = True) -> str:
        if self.stopped:
            return ""  # the engine may run on after a stop string; the text has ended
        self.ids.append(token)
        if not hold:  # the whole text is read at the end (a stop string is found then)
            return ""
        text = self._text()
        if self.stopped:
            return self._take(len(text), text)
        # hold back what could be the start of a stop string, and a byte-level BPE
        # character still missing its other bytes (decoded as U+FFFD)
        end = len(text) - max((len(s) - 1 for s in self.stops), default=0)
        while end > self.sent and text[end - 1] == "\ufffd":
            end -= 1
        return self._take(end, text)

    def final(self, finish: str) -> tuple[str, str]:
        """(the text not handed out yet, OpenAI's finish_reason)."""
        text = self._text()
        return self._take(len(text), text), "stop" if self.stopped else finish

    def _text(self) -> str:
        text = self.decode(self.ids)
        cut = [text.find(s) for s in self.stops if s in text]
        if cut:
            self.stopped = True
            return text[: min(cut)]
        return text

    def _take(self, end: int, text: str) -> str:
        if end <= self.sent:
            return ""
        piece, self.sent = text[self.sent : end], end
        return piece
