"""The subcommands by name: each is one module with `run(config, run_dir)`, a thin
composition root. A command's module is imported when it runs (its imports are heavy)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Run = Callable[[Any, Path], Any]


@dataclass(frozen=True)
class Command:
    what: str  # one line for `llmtune --help`
    example: str
    load: Callable[[], Run]  # the command's run function


def _pretrain() -> Run:
    from llmtune.commands.pretrain import run

    return run


def _prepare() -> Run:
    from llmtune.commands.prepare import run

    return run


def _plan() -> Run:
    from llmtune.commands.plan import run

    return run


def _evaluate() -> Run:
    from llmtune.commands.evaluate import run

    return run


def _finetune() -> Run:
    from llmtune.commands.finetune import run

    return run


def _export() -> Run:
    from llmtune.commands.export import run

    return run


def _chat() -> Run:
    from llmtune.commands.chat import run

    return run


def _report() -> Run:
    from llmtune.commands.report import run

    return run


def _prune() -> Run:
    from llmtune.commands.prune import run

    return run


def _serve() -> Run:
    from llmtune.commands.serve import run

    return run


COMMANDS = {
    "pretrain": Command(
        "train a BERT, GPT, Llama-family or T5 model from scratch",
        "llmtune pretrain model=bert-small",
        _pretrain,
    ),
    "prepare": Command(
        "tokenize a pretrain run's corpus once into token stores (same overrides)",
        "llmtune prepare model=gpt2-small data=files data.train='corpus/*.jsonl'",
        _prepare,
    ),
    "plan": Command(
        "estimate parameters, FLOPs, memory and step time of a pretrain run",
        "llmtune plan model=gpt2-small train.micro_batch_size=8",
        _plan,
    ),
    "evaluate": Command(
        "score a checkpoint on data or complete prompts",
        "llmtune evaluate ckpt=runs/pretrain/<time> data.test=held_out.txt",
        _evaluate,
    ),
    "finetune": Command(
        "adapt a checkpoint to a task (full, freeze, lora, prefix, prompt)",
        "llmtune finetune init_from=runs/pretrain/<time> objective=seq_cls data.train=train.jsonl",
        _finetune,
    ),
    "export": Command(
        "write a checkpoint as hf, gguf, onnx, torchscript, pt2, int8, int8wo or int4wo, verified",
        "llmtune export ckpt=runs/finetune/<time> format=hf out=exported/hf",
        _export,
    ),
    "prune": Command(
        "remove blocks and MLP neurons by measured importance; a smaller normal checkpoint",
        "llmtune prune ckpt=runs/finetune/<time> out=runs/pruned prune.layers=2 "
        "data.train=train.jsonl data.test=test.jsonl",
        _prune,
    ),
    "serve": Command(
        "answer OpenAI-style HTTP requests (completions, chat, embeddings) with a checkpoint",
        "llmtune serve ckpt=runs/pretrain/<time> serve.port=8000",
        _serve,
    ),
    "chat": Command(
        "talk to a chat model: each line a turn, answers streamed, the conversation kept",
        "llmtune chat ckpt=gguf:SmolLM2-135M-Instruct.Q4_1.gguf",
        _chat,
    ),
    "report": Command(
        "an HTML page with plots of run, sweep or several run directories",
        "llmtune report runs/pretrain/<time> runs/finetune/<time>",
        _report,
    ),
}
