"""The benchmark harness fails in one line: a missing real-data folder, a child that exits."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture(scope="module")
def harness():
    spec = importlib.util.spec_from_file_location("bench_harness", SCRIPTS / "bench_harness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_missing_real_data_is_one_line(harness, monkeypatch, tmp_path):
    monkeypatch.setenv("LLMTUNE_REAL_DATA", str(tmp_path / "absent"))
    with pytest.raises(SystemExit) as stop:
        harness.required_real_data()
    assert str(stop.value).startswith(f"bench: no real data at {tmp_path / 'absent'}")
    monkeypatch.setenv("LLMTUNE_REAL_DATA", str(tmp_path))
    assert harness.required_real_data() == tmp_path


def test_a_failing_child_is_one_line_naming_the_arm(harness, tmp_path):
    child = tmp_path / "child.py"
    child.write_text("import sys\nsys.exit(2)\n")
    with pytest.raises(SystemExit) as stop:  # not a CalledProcessError traceback
        harness.run_child(str(child), ["--child", "prepare-gpt"], tmp_path, quiet=True)
    assert str(stop.value) == "bench: the prepare-gpt run exited 2 (see above)"
