"""End-to-end pretraining of tiny BERT and GPT through the real CLI, in-process."""

from __future__ import annotations

import json

import pytest
import torch

from llmtune import checkpoint, loading
from llmtune.config.load import load_yaml
from llmtune.models import build_model
from tests.e2e.helpers import TINY_BERT, TINY_GPT, metrics, pretrain

STEP_FILES = ["config.yaml", "meta.json", "model.safetensors", "tokenizer.json", "train_state.pt"]


@pytest.mark.parametrize(
    ("family", "overrides", "terms"),
    [
        ("gpt", TINY_GPT, ["clm"]),
        ("bert", [*TINY_BERT, "objective=mlm_nsp"], ["mlm", "nsp"]),
        # on a CPU without bf16 units, products run in fp32 arithmetic (kernels/bf16.py)
        ("gpt", [*TINY_GPT, "hardware.precision=bf16"], ["clm"]),
    ],
    ids=["gpt", "bert", "gpt-bf16"],
)
def test_pretrain_writes_checkpoints_and_loss_falls(
    tmp_path, jsonl_corpus, family, overrides, terms
):
    run = tmp_path / "run"
    pretrain(
        run,
        jsonl_corpus,
        *overrides,
        "train.max_steps=40",
        "train.eval_every=20",
        "train.save_every=20",
        "checkpoint.keep_last=1",
    )
    root = run / "checkpoints"
    steps = sorted(p.name for p in root.glob("step-*"))
    assert (root / "latest").read_text().strip() == "step-00000040"
    assert (root / "best").read_text().strip() in steps
    assert "step-00000040" in steps and len(steps) <= 2  # keep_last=1 plus best
    step_dir = root / "step-00000040"
    assert sorted(p.name for p in step_dir.iterdir()) == STEP_FILES
    meta = json.loads((step_dir / "meta.json").read_text())
    assert meta["step"] == 40 and meta["family"] == family
    assert set(meta["files"]) == set(STEP_FILES) - {"meta.json"}
    train, evals = metrics(run)
    assert [r["step"] for r in train] == list(range(1, 41))
    first, last = sum(r["loss"] for r in train[:5]) / 5, sum(r["loss"] for r in train[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert all(r["tokens_per_s"] > 0 and r["mfu"] > 0 for r in train)
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    for term in terms:
        assert f"val_{term}_accuracy" in evals[-1]
    assert "val_perplexity" in evals[-1]


def test_checkpoint_reloads_to_identical_logits(tmp_path, jsonl_corpus):
    run = tmp_path / "run"
    pretrain(run, jsonl_corpus, *TINY_GPT, "train.max_steps=5")
    step_dir = checkpoint.resolve(run)
    checkpoint.verify(step_dir)
    config = load_yaml(step_dir / "config.yaml")
    weights = checkpoint.load_weights(step_dir)
    models = []
    for _ in range(2):
        model = build_model(config.model, ["lm"]).eval()
        loading.load_into(model, weights, step_dir)
        models.append(model)
    ids = torch.randint(0, config.model.vocab_size, (2, 16))
    with torch.no_grad():
        a = models[0].heads["lm"](models[0].backbone(ids))
        b = models[1].heads["lm"](models[1].backbone(ids))
    assert torch.equal(a, b)
    # The trained weights are really in the file (not a fresh init): tied head == embedding.
    tied = models[0].tied_parameter_names()
    assert tied and all(k not in weights for k in tied)


def test_resume_reproduces_the_uninterrupted_run(tmp_path, jsonl_corpus):
    common = [*TINY_GPT, "train.max_steps=12", "train.save_every=3", "train.eval_every=6"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    pretrain(straight, jsonl_corpus, *common)
    tokens_per_step = 8 * 32
    pretrain(resumed, jsonl_corpus, *common, f"train.max_tokens={7 * tokens_per_step}")
    assert (resumed / "checkpoints" / "latest").read_text().strip() == "step-00000007"
    pretrain(resumed, jsonl_corpus, *common)  # checkpoint.resume=auto by default
    a, _ = metrics(straight)
    b, _ = metrics(resumed)
    assert [r["step"] for r in b] == list(range(1, 13))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]


def test_resume_with_a_changed_architecture_is_refused(tmp_path, jsonl_corpus, capsys):
    run = tmp_path / "run"
    pretrain(run, jsonl_corpus, *TINY_GPT, "train.max_steps=2")
    with pytest.raises(SystemExit) as exit_info:
        pretrain(run, jsonl_corpus, *TINY_GPT, "model.n_layers=3", "train.max_steps=4")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "model.n_layers 2 -> 3" in err and len(err.strip().splitlines()) == 1


def test_resuming_a_finished_run_exits_cleanly(tmp_path, jsonl_corpus, capsys):
    run = tmp_path / "run"
    pretrain(run, jsonl_corpus, *TINY_GPT, "train.max_steps=2")
    capsys.readouterr()
    pretrain(run, jsonl_corpus, *TINY_GPT, "train.max_steps=2")
    assert "already finished" in capsys.readouterr().out
