"""`objective=distill` end to end on tiny BERTs: a student cut from every other teacher block
(`llmtune prune prune.keep_every=2`) learns from the frozen teacher; alpha=1 is exactly
seq_cls, a student equal to its teacher starts at zero KL, and bad teachers are one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmtune.cli import main
from llmtune.loading import load_checkpoint
from tests.conftest import make_documents
from tests.e2e.helpers import FAST, TINY_BERT, evaluate, metrics, pretrain, write_jsonl
from tests.e2e.test_finetune import sentiment_rows

NO_DROPOUT = ["model.dropout=0", "model.attn_dropout=0"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("distill")
    corpus = write_jsonl(root / "corpus.jsonl", [{"text": d} for d in make_documents(60)])
    pretrain(root / "bert", corpus, *TINY_BERT, "model.n_layers=4", "train.max_steps=3")
    paths = {
        "root": root,
        "train": write_jsonl(root / "train.jsonl", sentiment_rows(96, 1)),
        "test": write_jsonl(root / "test.jsonl", sentiment_rows(32, 2)),
    }
    finetune(root / "teacher", root / "bert", paths, "objective=seq_cls", "train.max_steps=20")
    main(
        ["prune", f"ckpt={root / 'teacher'}", f"out={root / 'student'}", "prune.keep_every=2",
         f"data.train={paths['train']}", f"data.test={paths['test']}", "prune.latency_runs=1",
         f"hydra.run.dir={root / 'prune-run'}"]
    )  # fmt: skip
    return {**paths, "teacher": root / "teacher", "student": root / "student"}


def finetune(run: Path, init: Path, paths: dict, *extra: str) -> None:
    main(
        ["finetune", f"hydra.run.dir={run}", f"init_from={init}", "data=files",
         f"data.train={paths['train']}", f"data.validation={paths['test']}", *FAST,
         "train.eval_every=5", *extra]
    )  # fmt: skip


def test_student_keeps_every_other_teacher_block(setup):
    student = load_checkpoint(setup["student"])
    assert student.config.model.n_layers == 2
    assert student.meta["pruning"]["kept_blocks"] == [0, 2]


def test_distilled_student_trains_and_evaluates_without_its_teacher(setup, tmp_path):
    run = tmp_path / "distilled"
    teacher = f"objective.teacher={setup['teacher']}"
    finetune(run, setup["student"], setup, "objective=distill", teacher, "train.max_steps=10")
    train, evals = metrics(run)
    assert len(train) == 10 and "val_accuracy" in evals[-1]
    loaded = load_checkpoint(run)
    assert loaded.meta["objective"] == "distill" and loaded.config.model.n_layers == 2
    results = evaluate(tmp_path / "eval", f"ckpt={run}", f"data.test={setup['test']}")
    assert results["accuracy"] == pytest.approx(evals[-1]["val_accuracy"])


def test_alpha_one_is_plain_seq_cls(setup, tmp_path):
    common = ("train.max_steps=3", *NO_DROPOUT)
    teacher = f"objective.teacher={setup['teacher']}"
    finetune(tmp_path / "a", setup["student"], setup, "objective=distill", teacher,
             "objective.alpha=1.0", *common)  # fmt: skip
    finetune(tmp_path / "b", setup["student"], setup, "objective=seq_cls", *common)
    losses = [[r["loss"] for r in metrics(tmp_path / x)[0]] for x in ("a", "b")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


def test_a_student_equal_to_its_teacher_starts_at_zero_kl(setup, tmp_path):
    teacher = f"objective.teacher={setup['teacher']}"
    finetune(tmp_path / "same", setup["teacher"], setup, "objective=distill", teacher,
             "objective.alpha=0.0", "train.max_steps=1", "optim.lr=1e-9", *NO_DROPOUT)  # fmt: skip
    first = metrics(tmp_path / "same")[0][0]["loss"]
    assert abs(first) < 1e-6
    # and the KL is a real signal: a 2-block student starts far from its 4-block teacher
    finetune(tmp_path / "far", setup["student"], setup, "objective=distill", teacher,
             "objective.alpha=0.0", "train.max_steps=1", *NO_DROPOUT)  # fmt: skip
    assert metrics(tmp_path / "far")[0][0]["loss"] > 1e-4


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ([], "objective.teacher is required"),
        (["objective.teacher=STUDENT_BASE"], "has no seq_cls head"),
        (["objective.teacher=TEACHER", "objective.temperature=0"], "must be positive"),
    ],
)
def test_bad_teachers_are_one_line_errors(setup, tmp_path, capsys, extra, says):
    names = {"STUDENT_BASE": str(setup["root"] / "bert"), "TEACHER": str(setup["teacher"])}
    extra = [e.split("=")[0] + "=" + names.get(e.split("=")[1], e.split("=")[1]) for e in extra]
    with pytest.raises(SystemExit) as exit_info:
        finetune(tmp_path / "x", setup["student"], setup, "objective=distill", *extra)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
