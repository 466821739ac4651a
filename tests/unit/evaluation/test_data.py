"""Prompts from lists and files; a missing or empty prompts file is a one-line user error."""

from __future__ import annotations

import pytest

from llmtune.evaluation.data import PromptsError, read_prompts


def test_list_values_are_prompts():
    assert read_prompts(("Once upon", "Hello")) == ["Once upon", "Hello"]
    assert read_prompts(("Hello there",)) == ["Hello there"]


def test_file_gives_one_prompt_per_non_empty_line(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("First prompt\n\n  \nSecond one\r\n")
    assert read_prompts((str(path),)) == ["First prompt", "Second one"]
    assert read_prompts((str(path), "extra")) == ["First prompt", "Second one", "extra"]


@pytest.mark.parametrize("value", ["missing.txt", "some/dir/prompts"])
def test_missing_file_names_it(tmp_path, value):
    with pytest.raises(PromptsError, match=f"prompts={value}: no such file"):
        read_prompts((value,))


def test_empty_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("\n\n")
    with pytest.raises(PromptsError, match="no prompt found"):
        read_prompts((str(path),))
