"""The configuration reference (docs/configuration.md), generated from the schema and the
registries: every section, every choice's own keys, each with its default and its comment.
`python -m llmtune.config.reference > docs/configuration.md` rewrites the page; a test fails
when the page and the schema drift."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from llmtune.config import choices, layout
from llmtune.config.build import first_class, section_fields
from llmtune.config.help import field_comments
from llmtune.config.schema import COMMAND_CLASSES, RunConfig

HEADER = """# Configuration reference

Generated from `llmtune/config/schema.py` and the registries by
`python -m llmtune.config.reference > docs/configuration.md`; `tests/unit/config/test_reference.py`
fails when this page and the schema drift. Defaults are the shipped YAML's (a test checks that
too); a command's primary config (`configs/<command>.yaml`) may set its own, and
`llmtune <command> --help` prints the defaults that command runs with.

Set any key on the command line as `section.key=value`; choose a section's option as
`section=<option>` (`model=gpt-mini`, `objective=seq_cls`, `method=lora`, `data=files`). A key
of another choice than the one made (`objective.mask_prob` with `objective=seq_cls`) is refused
with one line naming the choice it belongs to.
"""


def _default(cls: type, key: str) -> str:
    value = getattr(cls(), key)
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, str):
        text = repr(value) if value == "" or "\n" in value else value
    elif isinstance(value, tuple | list):
        text = "[" + ", ".join(str(v) for v in value) + "]"
    elif isinstance(value, dict):
        text = "{}"
    else:
        text = str(value)
    return f"`{text}`"


def _rows(section: str, cls: type, keys: list[str]) -> list[str]:
    comments = field_comments(cls)
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for key in keys:
        meaning = comments.get(key, "").replace("|", "\\|")
        rows.append(f"| `{section}.{key}` | {_default(cls, key)} | {meaning} |")
    return rows


def _doc(cls: type) -> str:
    return " ".join(line.strip() for line in (cls.__doc__ or "").strip().splitlines())


def _commands_using(section: str) -> str:
    commands = [c for c in layout.commands() if section in layout.command_sections(c)]
    return ", ".join(f"`{c}`" for c in commands)


def _choice_section(name: str, base: type) -> list[str]:
    """A section whose keys depend on a choice: the keys all choices share, then each
    choice's own."""
    shared = list(section_fields(base))
    lines = ["Keys every choice has:", "", *_rows(name, base, shared)]
    selector = choices.SELECTORS[name]
    for choice, cls in choices.classes(name).items():
        own = [k for k in section_fields(cls) if k not in shared]
        lines += ["", f"### {name}.{selector}={choice}", "", _doc(cls)]
        lines += ["", *_rows(name, cls, own)] if own else ["", "No keys of its own."]
    return lines


def _section(name: str, kind: Any) -> list[str]:
    cls = first_class(kind)
    lines = ["", f"## {name}", "", f"Used by: {_commands_using(name)}.", ""]
    if typing.get_origin(cls) is dict:  # tasks.<name>: sections the user names
        task = typing.get_args(cls)[1]
        lines += [_doc(task), "", *_rows(f"{name}.<name>", task, list(section_fields(task)))]
        return lines
    lines += [_doc(cls), ""]
    if name in choices.SELECTORS:
        return lines + _choice_section(name, cls)
    lines += _rows(name, cls, list(section_fields(cls)))
    for command, special in COMMAND_CLASSES.items():
        if name in special:
            other = special[name]
            lines += ["", f"### {name} in llmtune {command}", "", _doc(other), ""]
            lines += _rows(name, other, list(section_fields(other)))
    return lines


def _top_level(plain: list[str]) -> list[str]:
    comments = field_comments(RunConfig)
    lines = [
        "",
        "## Top-level keys",
        "",
        "| key | default | meaning | used by |",
        "|---|---|---|---|",
    ]
    for key in plain:
        meaning = comments.get(key, "").replace("|", "\\|")
        used = _commands_using(key)
        lines.append(f"| `{key}` | {_default(RunConfig, key)} | {meaning} | {used} |")
    return lines


def reference() -> str:
    """The whole page, in the schema's order."""
    fields = section_fields(RunConfig)
    sections = {
        k: v
        for k, v in fields.items()
        if dataclasses.is_dataclass(first_class(v)) or typing.get_origin(first_class(v)) is dict
    }
    plain = [k for k in fields if k not in sections and k != "command"]
    lines = [HEADER.rstrip(), *_top_level(plain)]
    for name, kind in sections.items():
        lines += _section(name, kind)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference(), end="")
