"""Credentials on the command line are refused before the run folder exists, and the error
never shows them (the run folder's .hydra/, config.yaml and metrics would keep them)."""

from __future__ import annotations

import pytest

from llmtune.cli import main

SECRET = "pw-SECRET-4821"


@pytest.mark.parametrize(
    "override",
    [
        f"data.train=https://user:{SECRET}@example.com/train.jsonl",  # main: echoed, .hydra kept it
        f"data.train='https://user:{SECRET}@example.com/x",  # main: the parse error echoed it
        f"data.train=a.jsonl,https://{SECRET}@example.com/b.jsonl",  # a sweep value, a bare token
        f"+data.token={SECRET}",
        f"+hf_token={SECRET}",
        f"+password={SECRET}",
        f"++api_key={SECRET}",
        f"+tokenizer.secret_key={SECRET}",
    ],
)
def test_credentials_are_refused_unshown_before_the_run_folder_exists(tmp_path, capsys, override):
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", f"hydra.run.dir={run}", "data=files", override])
    out = capsys.readouterr()
    assert exit_info.value.code == 2
    assert len(out.err.strip().splitlines()) == 1 and out.err.startswith("llmtune: error: ")
    assert SECRET not in out.out + out.err
    assert not run.exists()


@pytest.mark.parametrize(
    "override",
    ["data.tokens_column=words", "method.n_tokens=4", "train.max_tokens=100", "tokenizer=bpe"],
)
def test_keys_that_merely_mention_tokens_are_not_credentials(override):
    from llmtune.config.secrets import refuse_credentials

    refuse_credentials([override])
