"""train.max_epochs: resolved into a step count before training (the schedule and the
progress bar use it), the run stops there after exactly N passes; a set train.max_steps that
is smaller wins, said in one line; a stream of unknown size is a one-line error."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from llmtune.config.schema import HardwareConfig, OptimConfig, RunConfig, TrainConfig
from llmtune.errors import ConfigError
from llmtune.objectives import build_objective, entry
from llmtune.train.epochs import command_max_steps, resolve_epochs
from llmtune.train.optim import lr_at
from tests.unit.train.test_accumulation import GPT_INFO, cpu_trainer, examples, tiny_model


def _config(**train) -> RunConfig:
    keys = dict(global_batch_size=4, micro_batch_size=2, log_every=100, save_every=100)
    return RunConfig(
        command="pretrain",
        model=tiny_model("gpt"),
        objective=entry("clm").config(),
        optim=OptimConfig(lr=1e-3, warmup_steps=2),
        train=TrainConfig(**{**keys, **train}),
        hardware=HardwareConfig(device="cpu", precision="fp32", threads=1),
    )


def test_the_run_stops_after_the_resolved_steps(tmp_path, capsys):
    config = _config(max_epochs=3, eval_every=100)
    data = examples("gpt", n=20)  # 10 micro-batches of 2 = 5 steps of 4 rows per pass
    trainer = cpu_trainer(config, build_objective(config.objective, GPT_INFO), data, tmp_path)
    assert "train.max_epochs=3: 3 x 5 steps = 15 steps (20 train rows" in capsys.readouterr().out
    # everything that counts towards the end sees the resolved count
    assert trainer.train.max_steps == 15 and trainer.checkpoints.config.train.max_steps == 15
    trainer.fit()
    assert trainer.progress.step == 15
    assert trainer.batches.epoch == 3 and trainer.batches.state_dict()["position"] == 0
    last = lr_at(14, config.optim, 15)  # the schedule decays to its end at step 15, not 200
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(last)
    assert last < 0.2 * config.optim.lr < lr_at(14, config.optim, 200)


def test_a_pass_that_does_not_fill_the_last_step_rounds_up():
    config = _config(max_epochs=3)
    resolved, line = resolve_epochs(config, examples("gpt", n=27))  # 13 micro-batches a pass
    assert resolved.train.max_steps == 20 and "3 x 6.5 steps = 20 steps" in line
    assert resolve_epochs(_config(), examples("gpt", n=27)) == (_config(), "")


def test_a_smaller_max_steps_wins_and_is_said():
    data = examples("gpt", n=20)
    resolved, line = resolve_epochs(_config(max_epochs=3, max_steps=7), data)
    assert resolved.train.max_steps == 7
    assert "train.max_steps=7 is smaller and wins: 7 steps" in line and "\n" not in line
    resolved, line = resolve_epochs(_config(max_epochs=3, max_steps=100), data)
    assert resolved.train.max_steps == 15 and "the epochs win" in line
    # the command's own max_steps is no choice of the user's: the epochs decide
    default = command_max_steps("finetune")
    finetune = dataclasses.replace(_config(max_epochs=1, max_steps=default), command="finetune")
    assert resolve_epochs(finetune, data)[0].train.max_steps == 5
    assert default == 300 and command_max_steps("pretrain") == TrainConfig().max_steps


def test_data_of_unknown_size_is_an_error():
    stream = iter([{"input_ids": torch.zeros(2, 4)}])
    with pytest.raises(ConfigError, match="train.max_epochs=2: the training data is a stream"):
        resolve_epochs(_config(max_epochs=2), stream)
