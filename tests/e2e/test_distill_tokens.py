"""Token-level distillation end to end on tiny models: `objective=distill_token_cls|distill_mlm`
(BERT) and `distill_clm|distill_sft` (GPT) students learn from a frozen teacher with the same
head, save, and `llmtune evaluate` scores them without it; a student loaded from its teacher
starts at zero KL; a teacher with another head or another vocabulary is a one-line error."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from llmtune.cli import main
from llmtune.loading import load_checkpoint
from tests.conftest import make_documents
from tests.e2e.helpers import FAST, TINY_BERT, TINY_GPT, evaluate, fails, metrics, write_jsonl
from tests.e2e.helpers import pretrain as pretrain_run
from tests.e2e.test_finetune import WORDS

STEPS = ["train.max_steps=4", "train.eval_every=4", "train.save_every=4"]


def _tagged_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [rng.choice(WORDS + ["paris", "london"]) for _ in range(rng.randint(3, 8))]
        rows.append({"tokens": words, "tags": [("B-loc" if w in ("paris", "london") else "O")
                                               for w in words]})  # fmt: skip
    return rows


def _repeat_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    words = (rng.choice(WORDS) for _ in range(n))
    return [{"instruction": f"repeat {w}", "response": f"{w} {w}"} for w in words]


def finetune(run: Path, init: Path, *extra: str) -> None:
    main(["finetune", f"hydra.run.dir={run}", f"init_from={init}", "data=files", *FAST, *STEPS,
          *extra])  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Bases (the students' starts), one teacher per head, and the data."""
    root = tmp_path_factory.mktemp("distill_tokens")
    paths = {
        "corpus": write_jsonl(root / "corpus.jsonl", [{"text": d} for d in make_documents(60)]),
        "tags": write_jsonl(root / "tags.jsonl", _tagged_rows(64, 1)),
        "tags_test": write_jsonl(root / "tags_test.jsonl", _tagged_rows(16, 2)),
        "sft": write_jsonl(root / "sft.jsonl", _repeat_rows(64, 1)),
        "sft_test": write_jsonl(root / "sft_test.jsonl", _repeat_rows(16, 2)),
    }
    for name, preset in (("bert", TINY_BERT), ("gpt", TINY_GPT)):
        pretrain_run(root / name, paths["corpus"], *preset, "train.max_steps=3")
        paths[name] = root / name
    # the teachers: the bases trained on further (mlm, clm), or fine-tuned to tag (token_cls)
    finetune(root / "t_token_cls", paths["bert"], "objective=token_cls",
             f"data.train={paths['tags']}")  # fmt: skip
    finetune(root / "t_mlm", paths["bert"], "objective=mlm", f"data.train={paths['corpus']}")
    finetune(root / "t_lm", paths["gpt"], "objective=clm", f"data.train={paths['corpus']}")
    return {**paths, **{t: root / f"t_{t}" for t in ("token_cls", "mlm", "lm")}}


# student kind: (base, teacher, data.train, data.test, extra overrides, evaluate's metric)
KINDS = {
    "token_cls": ("bert", "token_cls", "tags", "tags_test", [], "entity_f1"),
    "mlm": ("bert", "mlm", "corpus", "corpus", [], "loss"),
    "clm": ("gpt", "lm", "corpus", "corpus", [], "perplexity"),
    "sft": ("gpt", "lm", "sft", "sft_test", ["objective.prompt_template='Q: {instruction} A:'"],
            "loss"),
}  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_a_distilled_student_trains_saves_and_evaluates(setup, tmp_path, kind):
    base, teacher, train, test, extra, metric = KINDS[kind]
    run = tmp_path / kind
    finetune(run, setup[base], f"objective=distill_{kind}", f"objective.teacher={setup[teacher]}",
             f"data.train={setup[train]}", *extra)  # fmt: skip
    records, evals = metrics(run)
    assert len(records) == 4 and all(math.isfinite(r["loss"]) for r in records)
    assert evals
    loaded = load_checkpoint(run)
    assert loaded.meta["objective"] == f"distill_{kind}"
    results = evaluate(tmp_path / "eval", f"ckpt={run}", f"data.test={setup[test]}")
    assert any(k.startswith(metric) for k in results), results


@pytest.mark.parametrize("kind", KINDS)
def test_a_student_loaded_from_its_teacher_starts_at_zero_kl(setup, tmp_path, kind):
    _, teacher, train, _, extra, _ = KINDS[kind]
    run, teacher_dir = tmp_path / kind, setup[teacher]
    finetune(run, teacher_dir, f"objective=distill_{kind}", f"objective.teacher={teacher_dir}",
             f"data.train={setup[train]}", "objective.alpha=0", "train.max_steps=1",
             "model.dropout=0", "model.attn_dropout=0", *extra)  # fmt: skip
    # alpha=0: the loss is the KL alone (without the teacher it would be the hard loss)
    assert abs(metrics(run)[0][0]["loss"]) < 1e-5


@pytest.mark.parametrize(
    ("kind", "teacher", "says"),
    [
        ("token_cls", "bert", "has no token_cls head"),  # an mlm teacher for a tagger
        ("mlm", "token_cls", "has no mlm head"),  # a tagger for a masked LM
        ("clm", "bert", "has no lm head"),  # a BERT for a GPT
        ("sft", "other_vocab", "tokenizer (vocabulary) differs"),  # a GPT of another vocabulary
    ],
)
def test_a_teacher_with_another_head_or_vocabulary_is_one_line(
    setup, tmp_path, capsys, kind, teacher, says
):
    base, _, train, _, extra, _ = KINDS[kind]
    teacher_dir = setup.get(teacher, tmp_path / "other")
    if teacher == "other_vocab":  # a GPT with its own, smaller tokenizer
        pretrain_run(teacher_dir, setup["corpus"], *TINY_GPT, "tokenizer.vocab_size=300",
                     "train.max_steps=1")  # fmt: skip
    args = [f"hydra.run.dir={tmp_path / 'x'}", f"init_from={setup[base]}", "data=files", *FAST,
            *STEPS, f"objective=distill_{kind}", f"objective.teacher={teacher_dir}",
            f"data.train={setup[train]}", *extra]  # fmt: skip
    err = fails(capsys, "finetune", *args)
    assert says in err and f"objective.teacher={teacher_dir}" in err


def test_distill_objectives_need_finetune_and_a_teacher(setup, tmp_path, capsys):
    err = fails(capsys, "pretrain", f"hydra.run.dir={tmp_path / 'p'}", "data=files",
                f"data.train={setup['corpus']}", *TINY_GPT, "objective=distill_clm",
                "objective.teacher=x")  # fmt: skip
    assert "use `llmtune finetune`" in err
    err = fails(capsys, "finetune", f"hydra.run.dir={tmp_path / 'f'}", f"init_from={setup['gpt']}",
                "data=files", f"data.train={setup['corpus']}", "objective=distill_clm")  # fmt: skip
    assert "objective.teacher is required: a checkpoint with a lm head" in err
