"""`llmtune chat`: talk to a chat model (an llmtune checkpoint, hf:<folder> or gguf:<file>) in
a REPL. Each line read is a user turn laid out by the model's chat template; the answer streams
as it is generated and the conversation so far is the next turn's context."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

import torch

from llmtune.config.schema import RunConfig
from llmtune.console import note, stage
from llmtune.data.chat import render_chat, specials
from llmtune.errors import ConfigError
from llmtune.loading import LoadedCheckpoint, load_checkpoint
from llmtune.models import Kind
from llmtune.models.generation import generate
from llmtune.train.hardware import resolve_runtime

COMMANDS = "/reset forgets the conversation, /exit (or end of input) quits"


class Session:
    """One conversation: its turns, and the answer to a new user turn, streamed to `out`."""

    def __init__(self, loaded: LoadedCheckpoint, config: RunConfig, out: TextIO) -> None:
        self.loaded, self.cfg, self.out = loaded, config.evaluate, out
        self.messages: list[dict[str, str]] = []
        self.generator = torch.Generator().manual_seed(config.seed)

    def _prompt_ids(self) -> list[int]:
        """The conversation laid out for an answer, oldest turns dropped until it leaves room
        for evaluate.max_new_tokens within the model's context."""
        chat, tok = self.loaded.config.tokenizer, self.loaded.tokenizer
        room = self.loaded.model.config.max_seq_len - self.cfg.max_new_tokens
        while True:
            text = render_chat(chat.chat_template, self.messages, True, specials(chat))
            ids = tok.encode(text, add_special_tokens=False).ids
            if len(ids) <= room or len(self.messages) <= 1:
                return ids
            self.messages = self.messages[2:]  # the oldest user turn and its answer

    def answer(self, text: str) -> str:
        self.messages.append({"role": "user", "content": text})
        tok, stop = self.loaded.tokenizer, self.loaded.stop_id
        new: list[int] = []
        shown = ""

        def stream(_: int, token: int) -> None:
            nonlocal shown
            if token == stop:
                return
            new.append(token)
            text = tok.decode(new)
            if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                self.out.write(text[len(shown) :])
                self.out.flush()
                shown = text

        generate(
            self.loaded.model, [self._prompt_ids()], self.cfg, stop, self.generator, True, stream
        )
        reply = tok.decode(new)
        self.out.write(reply[len(shown) :] + "\n")
        self.out.flush()
        self.messages.append({"role": "assistant", "content": reply})
        return reply


def _check(loaded: LoadedCheckpoint) -> None:
    if loaded.model.kind != Kind.DECODER or "lm" not in loaded.model.heads:
        raise ConfigError(f"ckpt: {loaded.step_dir} is no decoder with an lm head to chat with")
    if not loaded.config.tokenizer.chat_template:
        raise ConfigError(
            f"ckpt: {loaded.step_dir} has no chat template (tokenizer.chat_template); "
            "complete plain prompts with llmtune evaluate prompts=..."
        )


def run(config: RunConfig, run_dir: Path, lines: TextIO | None = None) -> None:
    runtime = resolve_runtime(config.hardware)
    torch.manual_seed(config.seed)
    with stage("checkpoint", f"loading {config.ckpt}"):
        loaded = load_checkpoint(config.ckpt, runtime.device)
        note(f"{loaded.family} from {loaded.step_dir}")
    _check(loaded)
    lines = sys.stdin if lines is None else lines
    interactive = lines.isatty()
    session = Session(loaded, config, sys.stdout)
    print(f"chatting with {config.ckpt} ({COMMANDS})", flush=True)
    while True:
        if interactive:
            print("> ", end="", flush=True)
        line = lines.readline()
        if not line or line.strip() == "/exit":
            break
        if line.strip() == "/reset":
            session.messages = []
            continue
        if line.strip():
            session.answer(line.strip())
