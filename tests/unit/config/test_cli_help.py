"""`llmtune <command> --help` lists the groups the command uses with their options, and every
key of every section it composes with its default and a line of explanation (issue 18:
today's help printed Hydra's composed YAML without explanations, and the groups of
commands that do not use them)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys

import pytest

from llmtune.cli import main
from llmtune.config import layout
from llmtune.config.build import chosen_class, native_objective, section_fields
from llmtune.config.compose import compose
from llmtune.config.help import field_comments

COMMANDS = ("pretrain", "finetune", "evaluate", "export", "plan", "report")


def _help(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", COMMANDS)
def test_help_lists_every_key_with_its_default_and_a_line(capsys, command):
    out = _help(capsys, command, "--help")
    values = native_objective(compose(command, []))  # objective=auto: the family's
    for group in layout.command_groups(command):
        assert f"  {group}: " in out, group
    for name in layout.command_sections(command):
        cls = chosen_class(name, values[name] if isinstance(values[name], dict) else {}, values)
        if cls is None or not dataclasses.is_dataclass(cls):
            continue
        comments = field_comments(cls)
        for key in section_fields(cls):
            assert comments.get(key), f"{cls.__name__}.{key} has no explanation"
            shown = [
                line for line in out.splitlines() if line.strip().startswith(f"{name}.{key} = ")
            ]
            assert shown and comments[key][:30] in shown[0], f"{command}: {name}.{key}"


def test_help_follows_the_chosen_options(capsys):
    out = _help(capsys, "pretrain", "model=bert-tiny", "objective=mlm_nsp", "--help")
    assert "model.type_vocab_size = 2" in out and "objective.nsp_prob = 0.5" in out
    assert "objective.separate_documents" not in out  # clm's key: not this run's


def test_help_names_only_the_groups_the_command_uses(capsys):
    out = _help(capsys, "evaluate", "--help")
    assert "  data: " in out and "  method: " not in out and "  model: " not in out


def test_help_piped_into_head_prints_no_traceback():
    """`llmtune pretrain --help | head` printed a BrokenPipeError traceback (issue 17)."""
    exe = shutil.which("llmtune") or os.path.join(os.path.dirname(sys.executable), "llmtune")
    if not os.path.exists(exe):
        pytest.skip("llmtune console script not installed in this environment")
    # `true` reads nothing and exits at once: every write llmtune makes meets a closed pipe
    result = subprocess.run(
        f"{exe} pretrain --help | true", shell=True, capture_output=True, text=True, timeout=120
    )
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr
