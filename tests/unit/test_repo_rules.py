"""Size and style rules from DESIGN.md, checked with ast so they cannot drift."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "llmtune"
CONFIG_DIR = PACKAGE.parent / "configs"
SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_files_are_small_and_documented():
    for path in SOURCES:
        text = path.read_text()
        assert len(text.splitlines()) <= 400, f"{path} has more than 400 lines"
        tree = ast.parse(text)
        if text.strip():
            assert ast.get_docstring(tree), f"{path} has no module docstring"


def test_functions_are_short_with_few_parameters():
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                args = [a for a in node.args.args + node.args.kwonlyargs if a.arg != "self"]
                assert length <= 60, f"{path}:{node.lineno} {node.name} has {length} lines"
                assert len(args) <= 7, f"{path}:{node.lineno} {node.name} has {len(args)} params"


def test_ownership_boundaries():
    for path in SOURCES:
        text = path.read_text()
        rel = path.relative_to(PACKAGE).as_posix()
        if "import hydra" in text or "from hydra" in text:
            assert rel == "cli.py" or rel.startswith("config/"), f"{rel} imports Hydra"
        if "llmtune.commands" in text:
            assert rel == "cli.py", f"{rel} imports commands/"
        if rel.startswith("objectives/"):
            assert "llmtune.train" not in text, f"{rel} imports train/ (the layer above it)"
        if rel.startswith("models/"):
            for banned in ("llmtune.data", "llmtune.objectives", "llmtune.train", "omegaconf"):
                assert banned not in text, f"{rel} imports {banned}"


def test_no_import_paths_in_user_yaml():
    for path in CONFIG_DIR.rglob("*.yaml"):
        if "hydra" not in path.relative_to(CONFIG_DIR).parts:
            assert "_target_" not in path.read_text(), path
