"""Never lose a run: an export never writes over what it reads, a run folder is never trained
over (missing `latest`, resume=never, a second process), and a full disk, a read-only folder
or a file in the way end in one line with every earlier checkpoint intact."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmtune import checkpoint
from llmtune.cli import main
from tests.e2e.helpers import FAST, TINY_GPT, fails, metrics, read_jsonl

SAVES = ["train.save_every=3", "train.eval_every=3"]


@pytest.fixture
def run(tmp_path, tiny_gpt_run) -> Path:
    return Path(shutil.copytree(tiny_gpt_run, tmp_path / "run"))


def train(run_dir: Path, corpus: Path, *overrides: str) -> None:
    args = [f"hydra.run.dir={run_dir}", "data=files", f"data.train={corpus}", *FAST, *TINY_GPT]
    main(["pretrain", *args, *SAVES, *overrides])


def train_fails(capsys, run_dir: Path, corpus: Path, *overrides: str) -> str:
    args = [f"hydra.run.dir={run_dir}", "data=files", f"data.train={corpus}", *FAST, *TINY_GPT]
    return fails(capsys, "pretrain", *args, *SAVES, *overrides)


def snapshot(run: Path) -> dict[str, bytes]:
    """Every checkpoint file's bytes, to show nothing was touched."""
    files = sorted(p for p in (run / "checkpoints").rglob("*") if p.is_file())
    return {str(p.relative_to(run)): p.read_bytes() for p in files}


@pytest.fixture
def small_disk(tmp_path):
    """mount(size) -> a fresh tmpfs of that size: a real full disk. Skipped where this test
    cannot mount one (it needs root)."""
    mounted: list[Path] = []

    def mount(size: str, options: str = "") -> Path:
        path = tmp_path / f"disk{len(mounted)}"
        path.mkdir()
        if os.geteuid() != 0:
            pytest.skip("mounting a small tmpfs (a real full disk) needs root")
        opts = f"size={size}" + (f",{options}" if options else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()[:80]}")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


# ---- export ---------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["the run", "its checkpoints", "its parent"])
def test_export_never_writes_into_or_over_what_it_reads(tmp_path, run, capsys, where):
    # main: out=<the run> with export.overwrite=true deleted the run and exited 0
    out = {"the run": run, "its checkpoints": run / "checkpoints", "its parent": tmp_path}[where]
    before = snapshot(run)
    err = fails(
        capsys, "export", f"ckpt={run}", "format=hf", f"out={out}", "export.overwrite=true",
        f"hydra.run.dir={tmp_path / 'export'}",
    )  # fmt: skip
    assert f"out={out}:" in err and "which this export reads" in err
    assert snapshot(run) == before


# ---- resume ---------------------------------------------------------------------------------
def test_missing_latest_resumes_from_the_newest_intact_step_and_says_so(run, tiny_corpus, capsys):
    # main: started again from step 0 and wrote over step-00000003
    root = run / "checkpoints"
    (root / "latest").unlink()
    step3 = (root / "step-00000003/meta.json").read_text()
    train(run, tiny_corpus, "train.max_steps=9")
    out = capsys.readouterr().out
    assert f"{root / 'latest'} is missing; resuming from the newest intact step folder" in out
    assert f"resumed from {root / 'step-00000006'} (step 6)" in out
    assert [r["step"] for r in metrics(run)[0]] == list(range(1, 10))  # steps 1-6 ran once
    assert (root / "step-00000003/meta.json").read_text() == step3
    assert (root / "latest").read_text().strip() == "step-00000009"


def test_missing_latest_and_no_intact_step_is_refused(run, tiny_corpus, capsys):
    root = run / "checkpoints"
    (root / "latest").unlink()
    for step in ("step-00000003", "step-00000006"):
        (root / step / "model.safetensors").write_bytes(b"damaged")
    before = snapshot(run)
    err = train_fails(capsys, run, tiny_corpus, "train.max_steps=9")
    assert f"{root} holds step folders but no 'latest' pointer and none of them is intact" in err
    assert snapshot(run) == before


def test_resume_never_refuses_a_folder_with_checkpoints(run, tiny_corpus, capsys):
    # main: trained a second run over the first one's folder, leaving a mix
    before = snapshot(run)
    err = train_fails(capsys, run, tiny_corpus, "checkpoint.resume=never")
    assert "holds the checkpoints of an earlier run" in err and "checkpoint.overwrite=true" in err
    assert snapshot(run) == before


def test_overwrite_moves_the_earlier_run_aside(run, tiny_corpus, capsys):
    before = snapshot(run)
    old_metrics = (run / "metrics.jsonl").read_text()
    train(run, tiny_corpus, "checkpoint.resume=never", "checkpoint.overwrite=true",
          "train.max_steps=6")  # fmt: skip
    (aside,) = run.glob("replaced-*")
    assert f"now in {aside}" in capsys.readouterr().out
    assert snapshot(aside) == before
    assert (aside / "metrics.jsonl").read_text() == old_metrics
    assert read_jsonl(run / "metrics.jsonl")[0]["step"] == 1  # a fresh run, its own metrics
    assert (run / "checkpoints/latest").read_text().strip() == "step-00000006"


# ---- one run per folder ---------------------------------------------------------------------
def _hold_lock(folder: Path) -> subprocess.Popen:
    """Another process holding the run folder's lock, as a running llmtune does."""
    code = (
        "import sys, time, pathlib\n"
        "from llmtune.train.run_folder import locked\n"
        "with locked(pathlib.Path(sys.argv[1])):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(600)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_run_on_a_busy_folder_stops_and_kill_9_leaves_no_lock(run, tiny_corpus, capsys):
    # main: both processes ran on one folder, exit 0, and one run's checkpoints were lost
    holder = _hold_lock(run)
    try:
        before = snapshot(run)
        err = train_fails(capsys, run, tiny_corpus, "train.max_steps=9")
        assert f"{run} is in use by another llmtune run (pid {holder.pid})" in err
        assert snapshot(run) == before
    finally:
        holder.kill()  # SIGKILL: the OS drops the lock with the process
        holder.wait()
    train(run, tiny_corpus, "train.max_steps=9")
    assert (run / "checkpoints/latest").read_text().strip() == "step-00000009"


@pytest.mark.slow
def test_two_real_runs_on_one_folder(tmp_path, tiny_corpus):
    run = tmp_path / "run"
    args = [f"hydra.run.dir={run}", "data=files", f"data.train={tiny_corpus}", *FAST, *TINY_GPT]
    argv = [sys.executable, "-m", "llmtune", "pretrain", *args, *SAVES, "train.max_steps=400"]
    first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lock, deadline = run / ".llmtune.lock", time.monotonic() + 300
        while not (lock.is_file() and lock.read_text().strip() == str(first.pid)):
            assert first.poll() is None and time.monotonic() < deadline, "the first run ended"
            time.sleep(0.2)
        second = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2
        assert second.stderr.strip().splitlines() == [
            f"llmtune: error: {run} is in use by another llmtune run (pid {first.pid}); wait "
            "for it to end or choose another hydra.run.dir"
        ]
    finally:
        first.kill()
        first.wait()


# ---- disks and folders ----------------------------------------------------------------------
def test_a_full_disk_while_saving_is_one_line_and_keeps_the_earlier_checkpoint(
    small_disk, tiny_corpus, capsys
):
    # main: a RuntimeError traceback from torch.save ("unexpected pos")
    run = small_disk("3m") / "run"  # step 3's checkpoint (2 MB) fits, step 6's does not
    err = train_fails(capsys, run, tiny_corpus, "train.max_steps=6")
    assert "could not write checkpoint" in err and "No space left on device" in err
    root = run / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["best", "latest", "step-00000003"]
    checkpoint.verify(root / "step-00000003")


@pytest.mark.slow  # 300 steps to fill the disk with metrics records
def test_a_full_disk_under_the_metrics_file_is_one_line(small_disk, tiny_corpus, capsys):
    # main: an OSError traceback from metrics.jsonl
    disk = small_disk("400k")
    # leave room for Hydra's .hydra/ files (written before llmtune runs) and a few hundred
    # metrics records of the 300 steps: metrics.jsonl fills the rest
    with (disk / "filler").open("wb") as f:
        f.write(b"\0" * (400 * 1024 - 40 * 1024))
    err = train_fails(capsys, disk / "run", tiny_corpus, "train.max_steps=300",
                      "train.save_every=1000", "train.eval_every=1000")  # fmt: skip
    assert "No space left on device (ENOSPC) while writing" in err
    assert "free disk space and run the same command again" in err


def test_a_full_disk_under_the_cache_is_one_line(
    small_disk, tmp_path, tiny_corpus, capsys, monkeypatch
):
    # main: a traceback from datasets writing the tokenized split
    monkeypatch.setenv("LLMTUNE_CACHE", str(small_disk("60k")))
    err = train_fails(capsys, tmp_path / "run", tiny_corpus, "train.max_steps=2")
    assert "No space left on device (ENOSPC)" in err


def test_a_read_only_run_folder_is_one_line(small_disk, tiny_corpus, capsys):
    # main: Hydra's OSError traceback
    disk = small_disk("1m")
    (disk / "run").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    err = train_fails(capsys, disk / "run", tiny_corpus)
    assert f"cannot write in {disk / 'run'} (read-only file system)" in err


def test_a_run_folder_path_that_is_a_file_is_one_line(tmp_path, tiny_corpus, capsys):
    # main: Hydra's FileExistsError traceback
    (tmp_path / "taken").write_text("not a folder")
    err = train_fails(capsys, tmp_path / "taken" / "run", tiny_corpus)
    assert f"{tmp_path / 'taken'} is a file, not a folder" in err


def test_exports_are_readable_by_the_group(run, tmp_path):
    # main: model.safetensors was 0600 in every export (checkpoints: tests/unit/test_checkpoint.py)
    old = os.umask(0o022)
    try:
        main(["export", f"ckpt={run}", "format=hf", f"out={tmp_path / 'hf'}",
              f"hydra.run.dir={tmp_path / 'export'}"])  # fmt: skip
    finally:
        os.umask(old)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in (tmp_path / "hf").iterdir()}
    assert set(modes.values()) == {"0o644"}, modes


# ---- several processes ----------------------------------------------------------------------
def test_ddp_batch_sizes_are_checked_once_before_any_worker_starts(tmp_path, capsys):
    # main: 4 workers started and each printed the error (4 lines)
    err = fails(capsys, "pretrain", "hardware=ddp", "hardware.nproc=4", "train.max_steps=1",
                f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert "train.global_batch_size=16 is not divisible by" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_the_readme_ddp_example_runs(tmp_path, tiny_corpus):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = "llmtune pretrain hardware=ddp hardware.nproc=4\n  train.micro_batch_size=4"
    assert example in readme
    main(["pretrain", "hardware=ddp", "hardware.nproc=4", "train.micro_batch_size=4", *TINY_GPT,
          "data=files", f"data.train={tiny_corpus}", "train.max_steps=2",
          f"hydra.run.dir={tmp_path / 'run'}"])  # fmt: skip
    assert (tmp_path / "run/checkpoints/latest").read_text().strip() == "step-00000002"
    assert [r["step"] for r in metrics(tmp_path / "run")[0]] == [2]  # log_every 10, last step
