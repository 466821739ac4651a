"""Labelled data that lies (null, nested or single-class labels, "1" against 1, tags that do
not fit their words) is said in one line naming the row; and an exported Hugging Face
classifier evaluates as the classifier it is."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from llmtune.cli import main
from tests.e2e.helpers import FAST, evaluate, fails, write_jsonl

STEPS = ["train.max_steps=1", "train.save_every=1", "train.eval_every=1"]


def rows(n: int, seed: int, label=lambda good: "pos" if good else "neg") -> list[dict]:
    """Sentences whose label is which cue word they hold."""
    rng = random.Random(seed)
    words = [
        "the",
        "a",
        "film",
        "story",
        "actor",
        "scene",
        "music",
        "city",
        "river",
        "long",
        "short",
        "old",
        "new",
    ]
    out = []
    for _ in range(n):
        sentence = [rng.choice(words) for _ in range(rng.randint(3, 8))]
        good = rng.random() < 0.5
        sentence.insert(rng.randrange(len(sentence) + 1), "great" if good else "awful")
        out.append({"text": " ".join(sentence), "label": label(good)})
    return out


def finetune_args(tmp_path: Path, base: Path, train: Path, *extra: str) -> list[str]:
    return ["finetune", f"hydra.run.dir={tmp_path / 'ft'}", f"init_from={base}",
            f"data.train={train}", *FAST, *STEPS, *extra]  # fmt: skip


def test_rows_without_a_label_are_counted_and_reported(tmp_path, tiny_gpt_run, capsys):
    # main: dropped without a word
    data = rows(40, 1)
    data[4]["label"] = data[9]["label"] = None
    train = write_jsonl(tmp_path / "train.jsonl", data)
    main(finetune_args(tmp_path, tiny_gpt_run, train))
    out = capsys.readouterr().out
    assert f"data.train: skipped 2 of 40 rows with no value (null) in text or label; the first " \
           f"is row 5 of '{train}'" in out  # fmt: skip


@pytest.mark.parametrize("value", [["pos", "neg"], {"a": 1}])
def test_a_list_or_mapping_label_names_its_row(tmp_path, tiny_gpt_run, capsys, value):
    # main: TypeError: unhashable type, a traceback
    data = rows(40, 1)
    data[6]["label"] = value
    train = write_jsonl(tmp_path / "train.jsonl", data)
    err = fails(capsys, *finetune_args(tmp_path, tiny_gpt_run, train))
    assert f"data.train: row 7 of '{train}' has a {type(value).__name__} in 'label'" in err


@pytest.mark.parametrize("objective", ["seq_cls", "token_cls"])
def test_a_single_class_is_an_error(tmp_path, tiny_gpt_run, capsys, objective):
    # main: trained a classifier that can only ever answer one class, exit 0
    if objective == "seq_cls":
        data = [{**row, "label": "pos"} for row in rows(40, 1)]
    else:
        data = [{"tokens": row["text"].split(), "tags": ["O"] * len(row["text"].split())}
                for row in rows(40, 1)]  # fmt: skip
    train = write_jsonl(tmp_path / "train.jsonl", data)
    err = fails(capsys, *finetune_args(tmp_path, tiny_gpt_run, train, f"objective={objective}"))
    assert "has the same label" in err and "at least two classes" in err


def test_text_and_number_spellings_of_a_label_are_one_label(tmp_path, tiny_gpt_run):
    # main: data.validation: label(s) '0', '1' do not occur in data.train
    train = write_jsonl(tmp_path / "train.jsonl", rows(40, 1, label=lambda g: int(g)))
    val = write_jsonl(tmp_path / "val.jsonl", rows(16, 2, label=lambda g: str(int(g))))
    main(finetune_args(tmp_path, tiny_gpt_run, train, f"data.validation={val}"))
    meta = json.loads((tmp_path / "ft/checkpoints/step-00000001/meta.json").read_text())
    assert meta["labels"] == [0, 1]


def test_words_and_tags_that_differ_name_the_files_own_line(tmp_path, tiny_gpt_run, capsys):
    # main: "row 6" for the 8th line (a position in the split left after validation was carved)
    data = [{"tokens": ["a", "b", "c"], "tags": ["O", "B-X", "O"]} for _ in range(20)]
    data[7]["tags"] = ["O"]
    train = write_jsonl(tmp_path / "ner.jsonl", data)
    err = fails(capsys, *finetune_args(tmp_path, tiny_gpt_run, train, "objective=token_cls"))
    assert f"data.train: row 8 of '{train}' has 3 tokens but 1 tags" in err


@pytest.fixture(scope="module")
def exported_classifier(tmp_path_factory, tiny_gpt_run) -> tuple[Path, Path, Path]:
    """(llmtune classifier run, its Hugging Face export, a labelled test file)."""
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("classifier")
    train = write_jsonl(root / "train.jsonl", rows(64, 1))
    test = write_jsonl(root / "test.jsonl", rows(32, 3))
    main(["finetune", f"hydra.run.dir={root / 'run'}", f"init_from={tiny_gpt_run}",
          f"data.train={train}", *FAST, "train.max_steps=4", "train.save_every=4",
          "train.eval_every=4"])  # fmt: skip
    main(["export", f"ckpt={root / 'run'}", "format=hf", f"out={root / 'hf'}",
          f"hydra.run.dir={root / 'export'}"])  # fmt: skip
    return root / "run", root / "hf", test


def test_a_hugging_face_classifier_evaluates_as_a_classifier(tmp_path, exported_classifier):
    # main: KeyError 'mlm' (the folder was read as a bare backbone)
    run, hf, test = exported_classifier
    ours = evaluate(tmp_path / "ours", f"ckpt={run}", f"data.test={test}")
    theirs = evaluate(tmp_path / "hf", f"ckpt=hf:{hf}", f"data.test={test}")
    assert theirs["task"] == "seq_cls" and theirs["n_examples"] == 32
    assert theirs["accuracy"] == ours["accuracy"]
    predicted = [
        [json.loads(line)["prediction"] for line in (tmp_path / name / "predictions.jsonl").open()]
        for name in ("ours", "hf")
    ]
    assert predicted[0] == predicted[1]


def test_a_backbone_without_heads_says_what_it_can_evaluate(tmp_path, exported_classifier, capsys):
    # main: KeyError 'mlm'
    _, hf, test = exported_classifier
    bare = Path(shutil.copytree(hf, tmp_path / "bare"))
    config = json.loads((bare / "config.json").read_text())
    config["architectures"] = ["GPT2Model"]
    (bare / "config.json").write_text(json.dumps(config))
    err = fails(capsys, "evaluate", f"ckpt=hf:{bare}", f"data.test={test}", "hardware=cpu",
                f"hydra.run.dir={tmp_path / 'ev'}")  # fmt: skip
    assert "a backbone with no head" in err and "evaluate.embeddings=true" in err
