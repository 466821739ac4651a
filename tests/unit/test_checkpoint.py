"""Checkpoint folders: atomic save, pointers, pruning that spares latest/best, bad files."""

from __future__ import annotations

import errno
import json
import os

import pytest
import torch

from llmtune import checkpoint
from llmtune.disk import disk_error
from llmtune.errors import CheckpointError


def save(root, step, value=1.0, train_state=True):
    contents = checkpoint.CheckpointContents(
        config_yaml="seed: 0\n",
        tokenizer_json="{}",
        train_state={"progress": {"step": step}} if train_state else None,
        meta={"heads": ["lm"]},
    )
    return checkpoint.save(root, step, {"w": torch.full((3,), value)}, contents)


def test_folder_contents_and_latest(tmp_path):
    step_dir = save(tmp_path, 20)
    assert step_dir.name == "step-00000020"
    assert sorted(p.name for p in step_dir.iterdir()) == sorted(
        ["model.safetensors", "config.yaml", "tokenizer.json", "train_state.pt", "meta.json"]
    )
    assert (tmp_path / "latest").read_text().strip() == "step-00000020"
    meta = checkpoint.verify(step_dir)
    assert meta["step"] == 20 and meta["format_version"] == checkpoint.FORMAT_VERSION
    assert set(meta["files"]) == {
        "model.safetensors",
        "config.yaml",
        "tokenizer.json",
        "train_state.pt",
    }
    assert not list(tmp_path.glob(".tmp-*"))


def test_prune_keeps_latest_and_best(tmp_path):
    dirs = [save(tmp_path, s) for s in (10, 20, 30, 40)]
    checkpoint.mark_best(tmp_path, dirs[0])
    checkpoint.prune(tmp_path, keep_last=1)
    remaining = sorted(p.name for p in tmp_path.glob("step-*"))
    assert remaining == ["step-00000010", "step-00000040"]


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_checkpoint_is_refused_naming_the_file(tmp_path, damage):
    step_dir = save(tmp_path, 5)
    weights = step_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "flip":
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "truncate":
        weights.write_bytes(bytes(data[: len(data) // 2]))
    else:
        weights.unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        checkpoint.verify(step_dir)


def test_resolve_prefers_best_then_latest(tmp_path):
    run = tmp_path / "run"
    root = run / "checkpoints"
    a, b = save(root, 1), save(root, 2)
    assert checkpoint.resolve(run) == b
    checkpoint.mark_best(root, a)
    assert checkpoint.resolve(run) == a
    assert checkpoint.resolve(b) == b
    with pytest.raises(CheckpointError, match="no such"):
        checkpoint.resolve(tmp_path / "nope")


def test_train_state_refuses_pickled_code(tmp_path):
    step_dir = save(tmp_path, 3)

    class Evil:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pwned')",))

    torch.save({"x": Evil()}, step_dir / "train_state.pt")
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        checkpoint.load_train_state(step_dir)


def test_wrong_format_version_refused(tmp_path):
    step_dir = save(tmp_path, 3)
    meta = json.loads((step_dir / "meta.json").read_text())
    meta["format_version"] = 99
    (step_dir / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format_version 99"):
        checkpoint.verify(step_dir)


def test_malformed_safetensors_is_refused(tmp_path):
    step_dir = save(tmp_path, 4)
    # A header length pointing far past the end of the file.
    (step_dir / "model.safetensors").write_bytes((10**9).to_bytes(8, "little") + b"{}")
    with pytest.raises(CheckpointError, match="model.safetensors: unreadable"):
        checkpoint.load_weights(step_dir)


def test_config_in_a_checkpoint_cannot_name_code_to_run(tmp_path):
    from llmtune.config.load import load_yaml
    from llmtune.errors import ConfigError

    path = tmp_path / "config.yaml"
    path.write_text("model:\n  _target_: os.system\n  family: gpt\n")
    with pytest.raises(ConfigError, match="unknown key 'model._target_'"):
        load_yaml(path)


@pytest.mark.parametrize("point", ["checkpoint.after_weights", "checkpoint.before_rename"])
def test_exception_while_saving_keeps_previous_checkpoint(tmp_path, monkeypatch, point):
    first = save(tmp_path, 1)
    monkeypatch.setenv("LLMTUNE_FAULT", f"{point}:error")
    with pytest.raises(RuntimeError, match="injected"):
        save(tmp_path, 2)
    assert (tmp_path / "latest").read_text().strip() == first.name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", first.name]
    checkpoint.verify(first)


def test_files_get_the_mode_the_umask_gives(tmp_path):
    # main: safetensors left model.safetensors 0600 (unreadable to the group)
    old = os.umask(0o022)
    try:
        step_dir = save(tmp_path, 7)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in step_dir.iterdir()}
    assert set(modes.values()) == {0o644}, modes


def test_a_full_disk_is_found_inside_library_errors():
    full = OSError(errno.ENOSPC, "No space left on device")
    assert disk_error(full) is full
    try:
        try:
            raise full
        except OSError:
            raise RuntimeError("unexpected pos 505280 vs 505168") from None
    except RuntimeError as wrapped:
        assert disk_error(wrapped) is full  # torch.save's way of saying it
    found = disk_error(Exception("Error while serializing: I/O error: (os error 122)"))
    assert found is not None and found.errno == errno.EDQUOT  # safetensors' way
    assert disk_error(OSError(errno.EACCES, "denied")) is None


@pytest.mark.parametrize("target", ["../other/step-00000001", "/tmp", "step-1", "step-00000001/x"])
def test_a_pointer_names_only_a_step_folder_beside_it(tmp_path, target):
    save(tmp_path, 1)
    (tmp_path / "latest").write_text(target + "\n")
    with pytest.raises(CheckpointError, match="does not name a step folder beside it"):
        checkpoint.read_pointer(tmp_path, "latest")


def test_prune_skips_what_is_not_a_real_step_folder(tmp_path):
    outside = tmp_path / "outside"
    kept = save(outside, 1)
    root = tmp_path / "run"
    for step in (2, 3, 4):
        save(root, step)
    (root / "step-00000001").symlink_to(kept)  # not this run's: never followed or deleted
    assert [p.name for p in checkpoint.prune(root, keep_last=1)] == [
        "step-00000002",
        "step-00000003",
    ]
    assert (root / "step-00000001").is_symlink() and (kept / "meta.json").is_file()
