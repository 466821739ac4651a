"""`llmtune <command> --help`: the groups the command uses with their options, and every key
with the command's default and its one-line explanation, generated from the schema's field
comments and the composed YAML (so it cannot drift from either)."""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import textwrap
import tokenize
from typing import Any

from llmtune.config import layout
from llmtune.config.build import chosen_class, native_objective, section_fields
from llmtune.config.schema import RunConfig


@functools.cache
def field_comments(cls: type) -> dict[str, str]:
    """Field -> its explanation: the comment ending its line, or the comment lines just above
    it; inherited fields keep their defining class's."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            out.update(_class_comments(klass))
    return out


def _class_comments(cls: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # made at run time (a composite objective's class)
        return {}
    comments = {
        tok.start[0]: tok.string.lstrip("#").strip()
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    }
    lines = source.splitlines()
    out = {}
    for node in ast.parse(source).body[0].body:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        row = node.lineno
        if row in comments and not lines[row - 1].lstrip().startswith("#"):
            out[node.target.id] = comments[row]
            continue
        above = []
        while row - 1 in comments and lines[row - 2].lstrip().startswith("#"):
            row -= 1
            above.insert(0, comments[row])
        out[node.target.id] = " ".join(above)
    return out


def _value(value: Any) -> str:
    if value == "???":
        return "(required)"
    if isinstance(value, str):
        return repr(value) if value == "" or " " in value or "\n" in value else value
    if isinstance(value, list):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _section_lines(name: str, values: Any, composed: dict[str, Any]) -> list[str]:
    cls = chosen_class(name, values if isinstance(values, dict) else {}, composed)
    if cls is None:  # a plain top-level key (seed, ckpt, ...)
        comment = field_comments(RunConfig).get(name, "")
        return [f"  {name} = {_value(values)}".ljust(44) + f"  {comment}"]
    if not dataclasses.is_dataclass(cls):  # tasks.<name>: named sections, added by the user
        return [f"  {name}.<name>.<key>   {field_comments(RunConfig).get(name, '')}"]
    comments = field_comments(cls)
    lines = [f"  {name}: {(cls.__doc__ or '').strip().splitlines()[0]}"]
    for key in section_fields(cls):
        shown = _value(values.get(key, getattr(cls(), key, ""))) if isinstance(values, dict) else ""
        lines.append(f"    {name}.{key} = {shown}".ljust(44) + f"  {comments.get(key, '')}")
    return lines


def command_help(command: str, composed: dict[str, Any], header: str) -> str:
    """The help text of `command` given its composed config (with the user's overrides)."""
    groups = list(layout.command_groups(command))
    lines = [
        f"llmtune {command}: {header}",
        "",
        f"usage: llmtune {command} [group=option ...] [section.key=value ...]",
        "",
        "config groups (group=option):",
    ]
    for group in groups:
        lines.append(f"  {group}: {', '.join(layout.group_options(group))}")
    lines += ["", "keys (section.key=value), with this command's defaults:"]
    composed = native_objective(composed)  # objective=auto: the family's, with its keys
    sections = layout.command_sections(command)
    ordered = [n for n in groups if n in sections] + [n for n in sections if n not in groups]
    for name in ordered:
        if name in composed and name != "command":  # the command is the one asked for
            lines += _section_lines(name, composed[name], composed)
    lines += ["", "Hydra's own flags: --cfg job, --info, --hydra-help, -m (sweep)."]
    return "\n".join(lines)
