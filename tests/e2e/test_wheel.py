"""The wheel is complete: built from this checkout and installed on its own, its `llmtune`
runs a command with the configs it ships (configs/ installs as llmtune.configs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_command_runs_from_the_built_wheel(tmp_path):
    wheels, target = tmp_path / "wheels", tmp_path / "installed"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    subprocess.run([*build, "-q", "-w", str(wheels), str(ROOT)], check=True, cwd=tmp_path)
    (wheel,) = wheels.glob("llmtune-*.whl")
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target"]
    subprocess.run([*install, str(target), str(wheel)], check=True, cwd=tmp_path)
    assert (target / "llmtune" / "configs" / "pretrain.yaml").is_file()
    assert (target / "llmtune" / "configs" / "experiment" / "bert-tiny-builtin.yaml").is_file()
    # the installed copy comes first on the path (the checkout's editable finder comes after)
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}
    where = subprocess.run(
        [sys.executable, "-c", "import llmtune; print(llmtune.__file__)"],
        env=env, cwd=tmp_path, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(target), where.stdout
    plan = subprocess.run(
        [str(target / "bin" / "llmtune"), "plan", "model=gpt-tiny", "train.micro_batch_size=2"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert "parameters" in plan.stdout.lower(), plan.stdout[-2000:]
    helped = subprocess.run(
        [str(target / "bin" / "llmtune"), "finetune", "--help"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert helped.returncode == 0 and "method: freeze, full, lora, prefix, prompt" in helped.stdout
