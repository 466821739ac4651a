"""The ETA: steps at the measured pace plus the evaluations and checkpoints still due."""

from __future__ import annotations

import pytest

from llmtune.config.schema import TrainConfig
from llmtune.train.eta import Eta, due


@pytest.mark.parametrize(
    ("step", "end", "every", "expected"),
    [
        (0, 100, 50, 2),  # at 50 and 100
        (50, 100, 50, 2),  # step 50 is logged before its evaluation runs
        (51, 100, 50, 1),
        (0, 120, 50, 3),  # 50, 100, and the final one at 120
        (100, 100, 50, 1),  # the last step's evaluation is still to come
        (101, 100, 50, 0),
        (0, 10, 0, 0),  # never
    ],
)
def test_due_counts_the_evaluations_still_to_come_and_the_final_one(step, end, every, expected):
    assert due(step, end, every) == expected


def test_remaining_counts_evaluations_and_saves_at_their_measured_cost():
    eta = Eta(TrainConfig(max_steps=100, eval_every=20, save_every=50))
    assert eta.remaining(0, 0) is None  # nothing timed yet
    eta.observe_steps(10, 5.0, 1000)  # 0.5 s a step
    eta.observe("eval", 3.0)
    eta.observe("save", 2.0)
    # 90 steps x 0.5 + evaluations at 20, 40, 60, 80, 100 x 3 + saves at 50, 100 x 2
    assert eta.remaining(10, 1000) == pytest.approx(45 + 15 + 4)


def test_before_the_first_evaluation_its_cost_is_estimated_from_the_step_time():
    train = TrainConfig(max_steps=40, eval_every=20, eval_batches=6, save_every=100)
    eta = Eta(train)
    eta.observe_steps(10, 10.0, 100)  # 1 s a step, no accumulation
    # 30 steps + 2 evaluations of 6 forward-only batches (a third of a step each) + final save 0
    assert eta.remaining(10, 100) == pytest.approx(30 + 2 * 6 / 3)


def test_max_tokens_ends_the_run_early():
    train = TrainConfig(max_steps=1000, max_tokens=2000, eval_every=1000, eval_batches=3)
    eta = Eta(train)
    eta.observe_steps(10, 10.0, 1000)  # 100 tokens a step, 1 s a step
    assert eta.end_step(10, 1000) == 20
    # 10 steps, then the final evaluation (3 forward-only batches: a step's time)
    assert eta.remaining(10, 1000) == pytest.approx(10 + 1)


def test_max_time_caps_the_estimate():
    train = TrainConfig(max_steps=10_000, max_time="60s", eval_every=10_000, eval_batches=3)
    eta = Eta(train)
    eta.observe_steps(10, 10.0, 100)
    assert eta.remaining(10, 100) <= 60 + 1  # the time left, then the final evaluation


def test_the_pace_follows_recent_windows_so_a_slow_warm_up_fades():
    eta = Eta(TrainConfig(max_steps=100))
    eta.observe_steps(10, 100.0, 100)  # 10 s a step while warming up
    for _ in range(10):
        eta.observe_steps(10, 10.0, 100)  # then 1 s a step
    assert eta.step_seconds == pytest.approx(1.0, rel=0.1)
