"""The installed console script and `python -m llmtune` run as separate processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest


def test_console_script_help_and_error_exit_code():
    exe = shutil.which("llmtune") or os.path.join(os.path.dirname(sys.executable), "llmtune")
    if not os.path.exists(exe):
        pytest.skip("llmtune console script not installed in this environment")
    ok = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "pretrain" in ok.stdout
    bad = subprocess.run(
        [exe, "pretrain", "optim.lr=-1"], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2
    assert bad.stderr.strip() == "llmtune: error: optim.lr=-1.0: must be positive"


def test_python_dash_m(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "llmtune", "pretrain", "model=gpt-tiny", "--cfg", "job"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 0 and "family: gpt" in out.stdout
