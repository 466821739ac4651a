"""Labelled rows longer than model.max_seq_len under data.overlong (truncate, drop, error),
through finetune and evaluate in-process: counted, dropped, or one line naming the row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmtune.cli import main
from tests.e2e.test_finetune import WORDS, _write, bert_base, corpus, finetune  # noqa: F401

LONG = " ".join(WORDS * 4)  # 52 words: far more than the tiny model's 32 positions


def _rows(n: int, long_at: tuple[int, ...]) -> list[dict]:
    """n short sentiment rows; those at the 0-based positions in long_at are over-long."""
    rows = []
    for i in range(n):
        text = LONG if i in long_at else f"the {WORDS[i % len(WORDS)]} film"
        rows.append({"text": f"{text} {'great' if i % 2 else 'awful'}", "label": i % 2})
    return rows


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("overlong")
    return {
        "train": _write(folder / "train.jsonl", _rows(40, long_at=(4, 9, 30))),
        "validation": _write(folder / "val.jsonl", _rows(16, long_at=())),
        "all_long": _write(folder / "long.jsonl", _rows(16, long_at=tuple(range(16)))),
    }


def _flat(text: str) -> str:
    """Console output with the terminal's line wrapping undone."""
    return " ".join(text.split())


def _finetune(run: Path, base: Path, train: Path, val: Path, *overrides: str) -> None:
    finetune(
        run,
        base,
        f"data.train={train}",
        f"data.validation={val}",
        "train.max_steps=2",
        "train.eval_every=2",
        "train.save_every=2",
        *overrides,
    )


def test_truncate_is_the_default_and_counts(tmp_path, bert_base, files, capsys):  # noqa: F811
    _finetune(tmp_path / "run", bert_base, files["train"], files["validation"])
    out = _flat(capsys.readouterr().out)
    assert "warning: data.train: 3 of 40 rows cut to model.max_seq_len=32" in out
    assert out.count("rows cut") == 1 and "40 train / 16 validation" in out


def test_drop_removes_and_says_how_many(tmp_path, bert_base, files, capsys):  # noqa: F811
    _finetune(
        tmp_path / "run", bert_base, files["train"], files["validation"], "data.overlong=drop"
    )
    out = _flat(capsys.readouterr().out)
    assert "data.train: dropped 3 of 40 rows longer than model.max_seq_len=32" in out
    assert "37 train / 16 validation" in out


def test_error_names_file_row_length_and_key_before_the_model(
    tmp_path,
    bert_base,  # noqa: F811
    files,
    capsys,
):
    with pytest.raises(SystemExit) as exit_info:
        _finetune(
            tmp_path / "run", bert_base, files["train"], files["validation"], "data.overlong=error"
        )
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert f"data.train: row 5 of '{files['train']}' has " in lines[0]
    assert "tokens, more than model.max_seq_len=32 (3 such rows)" in lines[0]
    assert "data.overlong" in lines[0] and "Traceback" not in captured.err
    assert "loaded" not in captured.out  # stopped before any weights were loaded


def test_drop_that_leaves_nothing_is_a_clear_error(tmp_path, bert_base, files, capsys):  # noqa: F811
    with pytest.raises(SystemExit) as exit_info:
        _finetune(
            tmp_path / "run",
            bert_base,
            files["all_long"],
            files["validation"],
            "data.overlong=drop",
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "data.train: all 16 rows are longer than model.max_seq_len=32" in err


def test_token_cls_and_sft_rows_and_evaluate_follow_the_key(tmp_path, bert_base, files, capsys):  # noqa: F811
    words = [[w, "paris"] for w in WORDS] + [["paris", *WORDS * 3]]  # the last one is long
    rows = [{"tokens": w, "tags": ["B-loc" if t == "paris" else "O" for t in w]} for w in words]
    ner = _write(tmp_path / "ner.jsonl", rows)
    with pytest.raises(SystemExit):
        _finetune(
            tmp_path / "ner", bert_base, ner, ner, "objective=token_cls", "data.overlong=error"
        )
    assert f"data.train: row {len(rows)} of '{ner}'" in capsys.readouterr().err
    # a model trained on short rows; evaluate drops the long test row and says so
    short = _write(tmp_path / "short.jsonl", rows[:-1])
    _finetune(tmp_path / "ner", bert_base, short, short, "objective=token_cls")
    main(
        [
            "evaluate",
            f"hydra.run.dir={tmp_path / 'eval'}",
            f"ckpt={tmp_path / 'ner'}",
            f"data.test={ner}",
            "data.overlong=drop",
            "hardware=cpu",
        ]
    )
    assert f"data.test: dropped 1 of {len(rows)} rows" in _flat(capsys.readouterr().out)
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["n_examples"] == len(rows) - 1
