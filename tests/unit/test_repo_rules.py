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
        if "llmtune.commands" in text:  # the package's own registry imports its modules
            assert rel == "cli.py" or rel.startswith("commands/"), f"{rel} imports commands/"
        if rel.startswith("objectives/"):
            for banned in ("llmtune.train", "llmtune.evaluation"):
                assert banned not in text, f"{rel} imports {banned} (a layer above it)"
        if rel.startswith("models/"):
            for banned in ("llmtune.data", "llmtune.objectives", "llmtune.train", "omegaconf"):
                assert banned not in text, f"{rel} imports {banned}"


# Layers, lowest first: a module imports only its own package and packages of lower layers
# (models -> objectives -> train/evaluation -> commands). Keys are module paths under
# llmtune; the longest matching prefix gives a module's layer.
LAYERS = {
    "errors": 0,
    "faults": 2,  # fault injection for tests (its stall waits for a preemption signal)
    "train.preemption": 1,  # the flag a scheduler's signal sets: read by the loop and faults
    "disk": 1,  # full disks, file modes: what any writer needs
    "runlog": 0,
    "": 0,  # llmtune/__init__.py
    "console": 1,  # rich output and timed stages, for any layer
    "config.schema": 1,  # the typed sections: read by every layer
    "data": 3,  # reads the family registry (each family's tokenizer kind)
    "models": 2,
    "adapters": 3,  # methods applied to a built model (freeze, lora, prefix, prompt)
    "kernels": 3,  # CPU kernels swapped into a built model (dropout masks, bf16 products)
    "objectives": 4,
    "config": 5,  # building and checking a config needs every registry
    "checkpoint": 6,  # the on-disk format (its config.yaml is built like any config)
    "foreign": 7,  # models in another format (hf:, gguf:) as bases
    "loading": 8,  # checkpoints (ours or another format's) into models
    "train": 9,
    "evaluation": 9,
    "export": 10,
    "plots": 10,  # figures of runs (llmtune report)
    "serve": 10,  # the HTTP server of llmtune serve
    "prune": 10,  # llmtune prune: importance and surgery (reads data like evaluate)
    "commands": 11,
    "cli": 12,
    "__main__": 13,
}


def _layer(module: str) -> tuple[str, int]:
    """(the LAYERS key, its layer) of a dotted module path under llmtune."""
    parts = module.split(".")
    for n in range(len(parts), -1, -1):
        key = ".".join(parts[:n])
        if key in LAYERS:
            return key, LAYERS[key]
    raise AssertionError(f"llmtune.{module} is in no layer; add it to LAYERS")


def _imports(path: Path) -> list[str]:
    """Modules under llmtune that a file imports (at the top or inside functions)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("llmtune"):
            names = [f"{node.module}.{a.name}" for a in node.names]
            out += [node.module] + [n for n in names if _is_module(n)]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("llmtune")]
    return [m.removeprefix("llmtune").lstrip(".") for m in out]


def _is_module(dotted: str) -> bool:
    rel = Path(*dotted.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").is_file() or (PACKAGE / rel).is_dir()


def test_layers_import_only_downwards():
    for path in SOURCES:
        module = ".".join(path.relative_to(PACKAGE).with_suffix("").parts).removesuffix("__init__")
        own, level = _layer(module.rstrip("."))
        for imported in _imports(path):
            key, other = _layer(imported)
            same_package = key.split(".")[0] == own.split(".")[0]
            assert other < level or same_package, (
                f"{path.relative_to(PACKAGE)} imports llmtune.{imported}: layer {other} "
                f"({key}) is not below layer {level} ({own})"
            )


def test_no_import_paths_in_user_yaml():
    for path in CONFIG_DIR.rglob("*.yaml"):
        if "hydra" not in path.relative_to(CONFIG_DIR).parts:
            assert "_target_" not in path.read_text(), path
