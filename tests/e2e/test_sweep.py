"""Sweeps: every combination in its own directory and a summary table at the end; shipped
sweep configs compose; the Optuna sweeper and the submitit-local launcher when installed."""

from __future__ import annotations

import json

import pytest

from llmtune.cli import main
from llmtune.config.overrides import check_overrides
from tests.e2e.helpers import FAST, TINY_GPT

SHORT = [*FAST, *TINY_GPT, "train.max_steps=2", "train.eval_every=2", "train.save_every=2"]


def sweep(sweep_dir, corpus, *overrides: str) -> None:
    main(
        [
            "pretrain",
            "-m",
            f"hydra.sweep.dir={sweep_dir}",
            "data=files",
            f"data.train={corpus}",
            *SHORT,
            *overrides,
        ]
    )


@pytest.mark.slow
def test_two_point_sweep_ends_with_a_table(tmp_path, jsonl_corpus, capsys):
    sweep(tmp_path / "sweep", jsonl_corpus, "optim.lr=1e-3,3e-3")
    out = capsys.readouterr().out
    for job in ("0", "1"):
        assert (tmp_path / "sweep" / job / "checkpoints" / "latest").is_file()
    table = (tmp_path / "sweep" / "summary.md").read_text()
    assert "sweep summary (2 runs" in out and table in out
    lines = table.strip().splitlines()
    assert lines[0].startswith("| run | overrides | status | step | loss | val_loss")
    assert "optim.lr=0.001" in lines[2] and "optim.lr=0.003" in lines[3]
    assert "data.train" not in table  # overrides shared by every run are left out
    rows = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert [r["metrics"]["step"] for r in rows] == [2, 2]
    assert all(r["metrics"]["val_loss"] > 0 for r in rows)


def test_shipped_sweep_and_launcher_options_pass_the_override_check():
    assert check_overrides("pretrain", ["sweep=lr", "hardware=ddp", "hardware=fsdp"])
    assert check_overrides(
        "pretrain", ["hydra/launcher=slurm", "hydra/launcher=submitit_local"]
    )  # plugin
    with pytest.raises(Exception, match="did you mean 'lr'"):
        check_overrides("pretrain", ["sweep=lrr"])


def test_shipped_sweep_configs_compose(capsys):
    for name in ("lr", "lr-batch", "tiny-models"):
        main(["pretrain", f"sweep={name}", "--cfg", "hydra", "-p", "hydra.sweeper.params"])
        assert "optim.lr" in capsys.readouterr().out


@pytest.mark.slow
def test_optuna_sweeper_through_the_shipped_config(tmp_path, jsonl_corpus, capsys):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep(tmp_path / "sweep", jsonl_corpus, "sweep=optuna-lr", "hydra.sweeper.n_trials=2")
    out = capsys.readouterr().out
    assert "sweep summary (2 runs" in out
    assert (tmp_path / "sweep" / "optimization_results.yaml").is_file()


@pytest.mark.slow
def test_submitit_local_launcher_runs_the_job(tmp_path, jsonl_corpus, capsys):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep(tmp_path / "sweep", jsonl_corpus, "hydra/launcher=submitit_local")
    assert (tmp_path / "sweep" / "0" / "checkpoints" / "latest").is_file()
    assert "sweep summary (1 runs" in capsys.readouterr().out


@pytest.mark.slow
def test_submitit_local_two_tasks_train_as_one_ddp_job(tmp_path, jsonl_corpus):
    """The SLURM path on one machine: two submitit tasks form one DDP job."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep(
        tmp_path / "sweep",
        jsonl_corpus,
        "hydra/launcher=submitit_local",
        "hydra.launcher.tasks_per_node=2",
        "hardware=ddp",
        "hardware.device=cpu",
        "train.micro_batch_size=4",
    )
    rows = (tmp_path / "sweep" / "0" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows if '"loss"' in r] == [1, 2]
