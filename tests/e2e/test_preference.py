"""End-to-end preference tuning through the real CLI, in-process, with a tiny GPT/BERT: reward
models, DPO and IPO (full and LoRA), pairs built from instruction data, PPO, and bad input."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from llmtune.cli import main
from tests.e2e.helpers import TINY_GPT, metrics, pretrain
from tests.e2e.test_finetune import WORDS, _write, finetune


def pair_rows(n: int, seed: int) -> list[dict]:
    """The chosen answer praises, the rejected one complains: a cue a tiny model can learn."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        w = rng.choice(WORDS)
        rows.append(
            {
                "prompt": f"tell me about the {w}",
                "chosen": f"the {w} is great",
                "rejected": f"the {w} is awful",
            }
        )
    return rows


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from tests.conftest import make_documents

    docs = [d + " the film is great. the story is awful." for d in make_documents(100)]
    return _write(tmp_path_factory.mktemp("corpus") / "c.jsonl", [{"text": d} for d in docs])


@pytest.fixture(scope="module")
def gpt_base(tmp_path_factory, corpus) -> Path:
    run = tmp_path_factory.mktemp("gpt") / "run"
    steps = ["train.max_steps=20", "train.eval_every=20", "train.save_every=20"]
    pretrain(run, corpus, *TINY_GPT, "model.max_seq_len=48", *steps)
    return run


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("pairs")
    return (
        _write(folder / "train.jsonl", pair_rows(160, 1)),
        _write(folder / "val.jsonl", pair_rows(32, 2)),
    )


def _pair_data(pairs: tuple[Path, Path]) -> list[str]:
    return [f"data.train={pairs[0]}", f"data.validation={pairs[1]}"]


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory, gpt_base, pairs) -> Path:
    run = tmp_path_factory.mktemp("rm") / "run"
    finetune(
        run,
        gpt_base,
        "objective=reward",
        *_pair_data(pairs),
        "train.max_steps=40",
        "train.eval_every=20",
        "train.save_every=40",
        "objective.prompt_template='Q: {instruction} A:'",
    )
    return run


def test_reward_model_learns_preferences_and_evaluates(tmp_path, reward_run, pairs):
    run = reward_run
    _, evals = metrics(run)
    assert evals[-1]["val_reward_accuracy"] >= 0.9, evals
    assert evals[-1]["val_reward_margin"] > 0
    meta = json.loads(next((run / "checkpoints").glob("step-*/meta.json")).read_text())
    assert meta["objective"] == "reward" and meta["heads"] == ["reward"]
    out = tmp_path / "eval"
    main(["evaluate", f"hydra.run.dir={out}", f"ckpt={run}", "data=files", f"data.test={pairs[1]}"])
    results = json.loads((out / "results.json").read_text())
    assert results["pairwise_accuracy"] >= 0.9 and results["n_pairs"] == 32, results


@pytest.mark.parametrize(
    "extra", [[], ["method=lora", "objective.loss=ipo"]], ids=["dpo", "ipo-lora"]
)
def test_dpo_raises_the_chosen_margin(tmp_path, gpt_base, pairs, extra):
    run = tmp_path / "dpo"
    finetune(
        run,
        gpt_base,
        "objective=dpo",
        *_pair_data(pairs),
        "train.max_steps=30",
        "train.eval_every=10",
        "train.save_every=30",
        "model.dropout=0",
        "model.attn_dropout=0",
        "objective.prompt_template='Q: {instruction} A:'",
        *extra,
    )
    _, evals = metrics(run)
    last = evals[-1]
    # reward margin = beta * (policy margin - reference margin): the policy's chosen-over-
    # rejected log-prob margin grew by more than a nat over the reference's (beta = 0.1)
    assert last["val_dpo_reward_margin"] / 0.1 > 1.0 and last["val_dpo_accuracy"] >= 0.9, evals
    assert "val_perplexity" not in last
    if "objective.loss=ipo" in extra:  # IPO pulls the log-ratio margin to 1 / (2 beta) = 5
        assert last["val_dpo_reward_margin"] == pytest.approx(0.5, abs=0.15), evals
    out = tmp_path / "eval"
    main(["evaluate", f"hydra.run.dir={out}", f"ckpt={run}", "data=files", f"data.test={pairs[1]}"])
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "dpo" and results["pairwise_accuracy"] >= 0.9, results
    assert results["logp_margin"] == pytest.approx(last["val_dpo_logp_margin"], rel=1e-3)


def test_ppo_trains_and_logs_rollouts(tmp_path, gpt_base, reward_run, pairs, capsys):
    run = tmp_path / "ppo"
    finetune(
        run,
        gpt_base,
        "objective=ppo",
        f"objective.reward_model={reward_run}",
        f"data.train={pairs[0]}",
        f"data.validation={pairs[1]}",
        "data.instruction_column=prompt",
        "objective.prompt_template='Q: {instruction} A:'",
        "objective.max_new_tokens=6",
        "objective.kl_coef=0.01",
        "train.max_steps=30",
        "train.log_every=5",
        "train.eval_every=30",
        "train.save_every=30",
        "train.eval_batches=1",
        "optim.lr=3e-3",
    )
    train, evals = metrics(run)
    assert {"reward", "kl", "response_tokens"} <= set(train[0]), train[0]
    assert "reward" in capsys.readouterr().out
    # the policy moved away from its reference (the KL penalty has something to measure);
    # whether the reward rises is the slow test's bar (test_preference_real.py): 30 tiny steps
    # on 8 prompts are too noisy for it (measured windows: -0.65, 2.81, -0.93, -0.30, 0.94, -2.44)
    assert all(math.isfinite(r["reward"]) for r in train) and abs(train[-1]["kl"]) > 0, train
    assert 1 <= train[-1]["response_tokens"] <= 6
    assert {"val_ppo_reward", "val_ppo_kl", "val_value_loss"} <= set(evals[-1])
    meta = json.loads(next((run / "checkpoints").glob("step-*/meta.json")).read_text())
    assert meta["objective"] == "ppo" and meta["heads"] == ["lm", "value"]


def test_pairs_built_from_instruction_data_are_scored_deterministically(tmp_path, reward_run):
    rows = [
        {"instruction": f"tell me about the {w}", "response": f"the {w} is great {i}"}
        for i, w in enumerate(WORDS * 2)
    ]
    test = _write(tmp_path / "sft.jsonl", rows)
    results = []
    for name in ("a", "b"):
        out = tmp_path / name
        main(
            [
                "evaluate",
                f"hydra.run.dir={out}",
                f"ckpt={reward_run}",
                "data=files",
                f"data.test={test}",
                "data.preference_pairs=shuffled_response",
            ]
        )
        results.append(json.loads((out / "results.json").read_text()))
    assert results[0] == {**results[1], "ckpt": results[0]["ckpt"]}
    # a row whose shuffled response comes out unchanged (e.g. "the the ...") has no pair
    assert len(rows) - 3 <= results[0]["n_pairs"] <= len(rows)
    assert 0 <= results[0]["pairwise_accuracy"] <= 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["objective=reward", "data.rejected_column=worse"], "data.rejected_column"),
        (["objective=ppo"], "objective.reward_model is required"),
        (["objective=dpo", "objective.loss=kto"], "objective.loss"),
        (["objective=reward", "data.preference_pairs=random"], "data.preference_pairs"),
    ],
)
def test_bad_preference_input_is_one_line_and_exit_2(
    tmp_path, gpt_base, pairs, overrides, message, capsys
):
    with pytest.raises(SystemExit) as exit_info:
        finetune(tmp_path / "bad", gpt_base, *_pair_data(pairs), *overrides)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_ppo_refuses_a_reward_model_that_is_not_one(tmp_path, gpt_base, pairs, capsys):
    with pytest.raises(SystemExit) as exit_info:
        finetune(
            tmp_path / "bad",
            gpt_base,
            "objective=ppo",
            f"objective.reward_model={gpt_base}",
            *_pair_data(pairs),
            "data.instruction_column=prompt",
        )
    assert exit_info.value.code == 2
    assert "not a reward model (objective=clm)" in capsys.readouterr().err
