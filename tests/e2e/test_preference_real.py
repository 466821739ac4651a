"""Slow: the preference quality bars on real instruction data (ChatterBot, shared real-data
folder), with a tiny GPT pretrained on it briefly. Pairs are built with
data.preference_pairs=shuffled_response (no human rankings ship with the data). Skips without
the data. Numbers measured are in the README."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import real_data
from tests.e2e.helpers import TINY_GPT, metrics, pretrain
from tests.e2e.test_finetune import finetune

pytestmark = pytest.mark.slow
TEMPLATE = "objective.prompt_template='Q: {instruction} A:'"


@pytest.fixture(scope="module")
def chat(tmp_path_factory) -> Path:
    return real_data("instructions", "chat_chatterbot.jsonl")


@pytest.fixture(scope="module")
def gpt_base(tmp_path_factory, chat) -> Path:
    """A tiny GPT that has read the conversations (prompt and answer as one text)."""
    folder = tmp_path_factory.mktemp("chat_gpt")
    rows = [json.loads(line) for line in chat.read_text().splitlines()]
    corpus = folder / "text.jsonl"
    corpus.write_text(
        "".join(
            json.dumps({"text": f"Q: {r['instruction']} A: {r['response']}"}) + "\n" for r in rows
        )
    )
    run = folder / "run"
    pretrain(
        run,
        corpus,
        *TINY_GPT,
        "model.max_seq_len=64",
        "tokenizer.vocab_size=1000",
        "train.max_steps=300",
        "train.global_batch_size=16",
        "train.micro_batch_size=16",
        "train.eval_every=300",
        "train.save_every=300",
        "train.log_every=50",
    )
    return run


def _pairs(chat: Path) -> list[str]:
    return [
        f"data.train={chat}",
        "data.preference_pairs=shuffled_response",
        "data.validation_fraction=0.2",
        "train.eval_batches=0",
        TEMPLATE,
    ]


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory, gpt_base, chat) -> Path:
    run = tmp_path_factory.mktemp("chat_rm") / "run"
    finetune(
        run,
        gpt_base,
        "objective=reward",
        *_pairs(chat),
        "train.max_steps=150",
        "train.eval_every=50",
        "train.save_every=150",
        "train.global_batch_size=16",
        "train.micro_batch_size=16",
        "optim.lr=1e-3",
    )
    return run


def test_reward_model_ranks_held_out_pairs_well_above_chance(reward_run):
    _, evals = metrics(reward_run)
    print("reward pairwise accuracy per evaluation:", [e["val_reward_accuracy"] for e in evals])
    assert evals[-1]["val_reward_accuracy"] >= 0.7, evals


def test_dpo_raises_the_held_out_chosen_margin(tmp_path, gpt_base, chat):
    run = tmp_path / "dpo"
    finetune(
        run,
        gpt_base,
        "objective=dpo",
        *_pairs(chat),
        "train.max_steps=60",
        "train.eval_every=20",
        "train.save_every=60",
        "model.dropout=0",
        "model.attn_dropout=0",
        "optim.lr=5e-4",
        "train.global_batch_size=16",
        "train.micro_batch_size=16",
    )
    _, evals = metrics(run)
    margins = [(e["val_dpo_logp_margin"], e["val_dpo_reward_margin"] / 0.1) for e in evals]
    print("DPO held-out (policy log-prob margin, gain over the reference):", margins)
    # the reward margin is beta * (policy margin - reference margin) on held-out pairs
    assert margins[-1][1] > 1.0 and evals[-1]["val_dpo_accuracy"] >= 0.7, evals


def test_ppo_raises_the_mean_reward(tmp_path, gpt_base, reward_run, chat):
    run = tmp_path / "ppo"
    finetune(
        run,
        gpt_base,
        "objective=ppo",
        f"objective.reward_model={reward_run}",
        f"data.train={chat}",
        TEMPLATE,
        "objective.max_new_tokens=12",
        "model.dropout=0",
        "model.attn_dropout=0",
        "train.max_steps=40",
        "train.log_every=4",
        "train.eval_every=40",
        "train.save_every=40",
        "train.eval_batches=1",
        "optim.lr=1e-3",
    )
    train, _ = metrics(run)
    rewards = [r["reward"] for r in train]
    print("PPO mean reward per logged window:", rewards)
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.3, rewards
