"""The `llmtune` entrypoint: pop the subcommand, hand the rest of argv to Hydra.

User errors (bad config, missing files, bad checkpoints) end as one line on stderr
and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path

from llmtune.errors import UserError

COMMANDS = {
    "pretrain": ("train a BERT or GPT from scratch", "llmtune pretrain model=bert-small"),
    "plan": (
        "estimate parameters, FLOPs, memory and step time of a pretrain run",
        "llmtune plan model=gpt2-small train.micro_batch_size=8",
    ),
    "evaluate": (
        "score a checkpoint on data or complete prompts",
        "llmtune evaluate ckpt=runs/pretrain/<time> data.test=held_out.txt",
    ),
    "finetune": (
        "adapt a checkpoint to a task (full, freeze, lora, prefix, prompt)",
        "llmtune finetune init_from=runs/pretrain/<time> objective=seq_cls data.train=train.jsonl",
    ),
    "export": (
        "write a checkpoint as hf, onnx, torchscript, pt2 or int8, verified against it",
        "llmtune export ckpt=runs/finetune/<time> format=hf out=exported/hf",
    ),
    "report": (
        "an HTML page with plots of run, sweep or several run directories",
        "llmtune report runs/pretrain/<time> runs/finetune/<time>",
    ),
}
USAGE = "usage: llmtune <command> [group=option ...] [key=value ...] [--help]"


def _print_help() -> None:
    lines = [USAGE, "", "commands:"]
    for name, (what, example) in COMMANDS.items():
        lines.append(f"  {name:<10} {what}")
        lines.append(f"  {'':<10} e.g. {example}")
    lines += ["", "`llmtune <command> --help` lists its config groups and keys."]
    print("\n".join(lines))


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error and exit."""
    print(f"llmtune: error: {message}", file=sys.stderr)
    raise SystemExit(code)


# Hydra flags that take the next argument as their value.
_FLAGS_WITH_VALUE = {
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--info",
    "-i",
    "--experimental-rerun",
}


def _flag_positions(args: list[str]) -> list[int]:
    """Indices in argv of Hydra's flags and their values (everything not an override)."""
    positions, skip = [], False
    for i, arg in enumerate(args):
        if skip:
            positions.append(i)
            skip = False
        elif arg.startswith("-"):
            positions.append(i)
            skip = arg in _FLAGS_WITH_VALUE and "=" not in arg
    return positions


def _without_flags(args: list[str]) -> list[str]:
    """The key=value overrides in argv, without Hydra's flags and their values."""
    flags = set(_flag_positions(args))
    return [arg for i, arg in enumerate(args) if i not in flags]


def _hydra_task(command: str) -> Callable[[], None]:
    import hydra
    from omegaconf import DictConfig

    @hydra.main(version_base="1.3", config_path="pkg://llmtune.configs", config_name=command)
    def task(cfg: DictConfig) -> float | None:
        from llmtune import runlog
        from llmtune.config import from_hydra
        from llmtune.config.sweep_summary import final_metrics
        from llmtune.train.distributed import env_info
        from llmtune.train.launch import run_command

        # everything printed, errors included, is kept in Hydra's <run dir>/<command>.log
        log_file = runlog.hydra_log_file() if env_info().is_main else None
        with runlog.capture(log_file, verbose=bool(cfg.get("verbose", False))):
            try:
                config, run_dir = from_hydra(cfg)
                run = importlib.import_module(f"llmtune.commands.{command}").run
                run_command(run, command, config, run_dir)  # one process, or nproc workers
            except UserError as exc:
                fail(str(exc), exc.exit_code)
        # What a sweeper that optimises (Optuna) minimises: the final validation loss.
        return final_metrics(run_dir).get("val_loss")

    return task


def _worker(args: list[str]) -> None:
    """A worker started by `hardware.nproc=N` (train/launch.py): its config is resolved already."""
    from omegaconf import OmegaConf

    from llmtune import runlog
    from llmtune.train.distributed import env_info
    from llmtune.train.launch import worker_main

    command, config_path, run_dir = args
    log_file = Path(run_dir) / f"{command}.log" if env_info().is_main else None
    verbose = bool(OmegaConf.load(config_path).get("verbose", False))
    with runlog.capture(log_file, verbose):
        try:
            run = importlib.import_module(f"llmtune.commands.{command}").run
            worker_main(run, command, config_path, run_dir)
        except UserError as exc:
            fail(str(exc), exc.exit_code)


def main(argv: list[str] | None = None) -> None:
    """Run `llmtune <command> [overrides]`; `argv` excludes the program name."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        _print_help()
        raise SystemExit(0 if args else 2)
    command, overrides = args[0], args[1:]
    if command == "report":  # its run folders come as positional arguments
        from llmtune.commands.report import runs_override

        overrides = runs_override(overrides)
    if command == "_worker":
        return _worker(overrides)
    if command not in COMMANDS:
        from llmtune.config.build import suggestion

        fail(f"unknown command '{command}'{suggestion(command, COMMANDS)}")
    from llmtune.config.overrides import check_overrides

    try:
        checked = iter(check_overrides(_without_flags(overrides)))
    except UserError as exc:
        fail(str(exc), exc.exit_code)
    flags = set(_flag_positions(overrides))
    overrides = [arg if i in flags else next(checked) for i, arg in enumerate(overrides)]
    saved_argv = sys.argv
    sys.argv = [f"llmtune {command}", *overrides]
    try:
        _hydra_task(command)()
    finally:
        sys.argv = saved_argv
