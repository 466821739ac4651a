"""`llmtune evaluate` in-process on tiny pretrained checkpoints: perplexity, masked-LM loss,
generation, zero/few-shot classification, batch predictions, and one-line user errors."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from llmtune.cli import main
from tests.conftest import make_documents
from tests.e2e.helpers import TINY_BERT, TINY_GPT, evaluate, pretrain, read_jsonl, write_jsonl

SHORT = ["train.max_steps=20", "train.eval_every=20", "train.save_every=20"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evaluate")
    corpus = write_jsonl(root / "corpus.jsonl", [{"text": d} for d in make_documents(120)])
    docs = make_documents(12, seed=3, sentences=2)
    labelled = [{"text": d, "label": ["neg", "pos"][i % 2]} for i, d in enumerate(docs)]
    out = {
        "corpus": corpus,
        "test": write_jsonl(root / "test.jsonl", [{"text": d} for d in make_documents(8, seed=9)]),
        "labelled": write_jsonl(root / "labelled.jsonl", labelled),
        "unlabelled": write_jsonl(root / "unlabelled.jsonl", [{"text": d} for d in docs[:5]]),
        "prompts": root / "prompts.txt",
        "gpt": root / "gpt",
        "bert": root / "bert",
    }
    out["prompts"].write_text("The river\nA quiet garden\n")
    pretrain(out["gpt"], corpus, *TINY_GPT, *SHORT)
    pretrain(out["bert"], corpus, *TINY_BERT, *SHORT)
    return out


def test_gpt_perplexity_and_generation_from_file(tmp_path, files):
    out = tmp_path / "eval"
    results = evaluate(
        out,
        f"ckpt={files['gpt']}",
        "data=files",
        f"data.test={files['test']}",
        f"prompts={files['prompts']}",
        "evaluate.max_new_tokens=6",
    )
    assert results["task"] == "causal_lm" and results["step"] == 20
    assert results["n_examples"] == 8 and results["n_tokens"] > 100
    assert results["perplexity"] == pytest.approx(math.exp(results["loss"]), rel=1e-6)
    assert results["perplexity"] < 400  # tokenizer.vocab_size=400: better than uniform
    rows = read_jsonl(out / "generations.jsonl")
    assert [r["prompt"] for r in rows] == ["The river", "A quiet garden"]
    assert all(1 <= r["new_tokens"] <= 6 and r["stop"] in ("eos", "max_new_tokens") for r in rows)
    assert results["n_prompts"] == 2 and results["generations_file"] == "generations.jsonl"
    assert results["generation_tokens_per_s"] > 0
    assert sorted(p.name for p in out.iterdir() if p.suffix != ".log") == [
        ".hydra",
        "generations.jsonl",
        "results.json",
    ]


def test_sampled_generation_from_a_list_on_a_step_folder(tmp_path, files):
    step = files["gpt"] / "checkpoints" / "step-00000020"
    args = [
        f"ckpt={step}",
        "prompts=[Once upon a time,The city]",
        "evaluate.temperature=0.8",
        "evaluate.top_k=20",
        "evaluate.top_p=0.9",
        "evaluate.max_new_tokens=5",
        "seed=3",
    ]
    first = evaluate(tmp_path / "a", *args)
    evaluate(tmp_path / "b", *args)
    assert first["ckpt"] == str(step)
    a, b = (
        read_jsonl(tmp_path / "a" / "generations.jsonl"),
        read_jsonl(tmp_path / "b" / "generations.jsonl"),
    )
    assert [r["prompt"] for r in a] == ["Once upon a time", "The city"]
    assert a == b  # the seed fixes the samples
    # prompts complete together (left-padded) or one at a time: the same samples either way
    evaluate(tmp_path / "c", *args, "evaluate.batch_size=1")
    assert read_jsonl(tmp_path / "c" / "generations.jsonl") == a


def test_zero_and_few_shot_classification(tmp_path, files):
    common = [f"ckpt={files['gpt']}", f"data.test={files['labelled']}"]
    words = ["evaluate.label_words=[river,garden]", "evaluate.label_names=[neg,pos]"]
    results = evaluate(tmp_path / "zero", *common, *words)
    assert results["task"] == "zero_shot" and results["n_examples"] == 12
    for key in ("accuracy", "f1_macro", "precision_macro", "recall_macro", "per_class"):
        assert key in results
    assert results["confusion_matrix"]["labels"] == ["neg", "pos"]
    assert sum(map(sum, results["confusion_matrix"]["matrix"])) == 12
    predictions = read_jsonl(tmp_path / "zero" / "predictions.jsonl")
    assert len(predictions) == 12 and set(predictions[0]) == {
        "text",
        "label",
        "prediction",
        "scores",
    }
    few = evaluate(tmp_path / "few", *common, *words, f"data.train={files['labelled']}",
                   "evaluate.few_shot=2")  # fmt: skip
    assert few["task"] == "few_shot" and 0 <= few["accuracy"] <= 1


def test_unlabelled_test_split_writes_predictions_only(tmp_path, files):
    results = evaluate(
        tmp_path / "out",
        f"ckpt={files['gpt']}",
        f"data.test={files['unlabelled']}",
        "evaluate.label_words=[river,garden]",
    )
    assert "accuracy" not in results and results["predictions_file"] == "predictions.jsonl"
    rows = read_jsonl(tmp_path / "out" / "predictions.jsonl")
    assert len(rows) == 5 and all(r["prediction"] in ("river", "garden") for r in rows)


def test_bert_masked_lm_loss(tmp_path, files):
    args = [f"ckpt={files['bert']}", f"data.test={files['test']}"]
    results = evaluate(tmp_path / "a", *args)
    assert results["task"] == "masked_lm" and results["n_targets"] > 0
    assert "not pseudo-perplexity" in results["note"]
    assert results["perplexity"] == pytest.approx(math.exp(results["loss"]), rel=1e-6)
    assert evaluate(tmp_path / "b", *args)["loss"] == results["loss"]  # fixed-seed masks


def _corrupt(files: dict, tmp_path: Path) -> Path:
    copy = tmp_path / "corrupt"
    shutil.copytree(files["gpt"] / "checkpoints" / "step-00000020", copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    return copy


@pytest.mark.parametrize(
    ("make_args", "expected"),
    [
        (lambda f, t: [f"ckpt={t / 'nope'}", "prompts=[Hi]"], "no such checkpoint"),
        (lambda f, t: [f"ckpt={_corrupt(f, t)}", "prompts=[Hi]"], "checksum mismatch"),
        (lambda f, t: [f"ckpt={f['gpt']}", f"prompts={t / 'missing.txt'}"], "missing.txt: no such"),
        (lambda f, t: [f"ckpt={f['bert']}", "prompts=[Hi]"], "generation needs a gpt"),
        (lambda f, t: ["prompts=[Hi]"], "ckpt is required"),
        (lambda f, t: [f"ckpt={f['gpt']}"], "nothing to evaluate"),
        (
            lambda f, t: [
                f"ckpt={f['gpt']}",
                f"data.test={f['labelled']}",
                f"data.train={f['unlabelled']}",
                "evaluate.label_words=[a,b]",
                "evaluate.few_shot=1",
            ],
            "data.train: no label column 'label'",
        ),
        (
            lambda f, t: [
                f"ckpt={f['gpt']}",
                f"data.test={f['labelled']}",
                "data.text_column=review",
                "evaluate.label_words=[a,b]",
            ],
            "no column 'review'",
        ),
        (lambda f, t: [f"ckpt={f['gpt']}", "prompts=[Hi]", "evaluate.top_p=0"], "evaluate.top_p"),
    ],
)
def test_user_errors_are_one_line_exit_2(tmp_path, files, capsys, make_args, expected):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", f"hydra.run.dir={tmp_path / 'run'}", *make_args(files, tmp_path)])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert expected in err and len(err.splitlines()) == 1, err
