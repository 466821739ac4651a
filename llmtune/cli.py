"""The `llmtune` entrypoint: pop the subcommand, hand the rest of argv to Hydra.

User errors (bad config, missing files, bad checkpoints) end as one line on stderr
and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from llmtune.commands import COMMANDS
from llmtune.errors import UserError

USAGE = "usage: llmtune <command> [group=option ...] [key=value ...] [--help]"


def _print_help() -> None:
    lines = [USAGE, "", "commands:"]
    for name, command in COMMANDS.items():
        lines.append(f"  {name:<10} {command.what}")
        lines.append(f"  {'':<10} e.g. {command.example}")
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
        from llmtune.config.load import from_hydra
        from llmtune.config.sweep_summary import final_metrics
        from llmtune.train.distributed import env_info
        from llmtune.train.launch import run_command

        # everything printed, errors included, is kept in Hydra's <run dir>/<command>.log
        log_file = runlog.hydra_log_file() if env_info().is_main else None
        with runlog.capture(log_file, verbose=bool(cfg.get("verbose", False))):
            try:
                config, run_dir = from_hydra(cfg)
                run = COMMANDS[command].load()
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
            run = COMMANDS[command].load()
            worker_main(run, command, config_path, run_dir)
        except UserError as exc:
            fail(str(exc), exc.exit_code)


def _command_help(command: str, overrides: list[str]) -> None:
    """`llmtune <command> --help`: groups, options and every key, from the schema and YAML."""
    from llmtune.config.compose import compose
    from llmtune.config.help import command_help

    composed = compose(command, [o for o in overrides if not o.startswith("hydra.")])
    print(command_help(command, composed, COMMANDS[command].what))
    print(f"e.g. {COMMANDS[command].example}")


def _run(args: list[str]) -> None:
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
    from llmtune.train.run_folder import check_run_dirs

    try:
        checked = iter(check_overrides(command, _without_flags(overrides)))
        if any(a in ("-h", "--help") for a in overrides):
            _command_help(command, [a for a in _without_flags(overrides)])
            raise SystemExit(0)
        check_run_dirs(_without_flags(overrides))
    except UserError as exc:
        fail(str(exc), exc.exit_code)
    flags = set(_flag_positions(overrides))
    overrides = [arg if i in flags else next(checked) for i, arg in enumerate(overrides)]
    if not any(overrides[i] in ("-m", "--multirun") for i in flags):
        from llmtune.config.compose import compose

        try:  # a composition error is one line here, not Hydra's report
            compose(command, [arg for i, arg in enumerate(overrides) if i not in flags])
        except UserError as exc:
            fail(str(exc), exc.exit_code)
    from llmtune.config.launch_errors import one_line_launch_errors

    saved_argv = sys.argv
    sys.argv = [f"llmtune {command}", *overrides]
    try:
        with one_line_launch_errors(multirun=bool({"-m", "--multirun"} & set(overrides))):
            _hydra_task(command)()
    except UserError as exc:  # a sweep's job was refused or failed (SLURM, submitit)
        fail(str(exc), exc.exit_code)
    finally:
        sys.argv = saved_argv


def main(argv: list[str] | None = None) -> None:
    """Run `llmtune <command> [overrides]`; `argv` excludes the program name."""
    try:
        _run(list(sys.argv[1:] if argv is None else argv))
    except BrokenPipeError:
        # the reader went away (`llmtune pretrain --help | head`): nothing more to say, and
        # the interpreter's last flush of stdout must not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0) from None
