"""Bad keys and values end with one line naming the key (and a suggestion) and exit code 2."""

from __future__ import annotations

import pytest

from llmtune.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    err = capsys.readouterr().err.strip()
    return exit_info.value.code, err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["train.max_step=5"], "did you mean 'max_steps'"),
        (["optim.lrr=0.1"], "did you mean 'lr'"),
        (["+train.foo=1"], "unknown key 'train.foo'"),
        (["model=bert-smal"], "did you mean 'bert-small'"),
        (["objective=mlmm"], "did you mean 'mlm'"),
        (["trian.max_steps=1"], "did you mean 'train'"),
        (["optim.lr=-1"], "optim.lr"),
        (["model=bert-tiny", "objective.mask_prob=1.5"], "objective.mask_prob"),
        (["model.n_heads=3"], "model.n_heads=3 does not divide model.d_model"),
        (["train.micro_batch_size=5"], "train.global_batch_size=16 is not divisible"),
        (["model.max_seq_len=4096"], "exceeds the position table"),
        (["model=bert-tiny", "objective=clm"], "objective=clm needs a gpt model"),
        (["data=files"], "data.train is required"),
        # the built-in corpus reads no files: a path must not be silently ignored
        (["data.train=corpus.txt"], "data.train=corpus.txt is set, but data=builtin reads no"),
        (["data=hub", "data.name=x", "data.test=t.txt"], "data=hub reads no files; add data=files"),
        (["train.max_steps=abc"], "train.max_steps='abc': expected a value of type int"),
        (["train.max_time=soon"], "train.max_time"),
    ],
)
def test_bad_config_is_one_line_exit_2(capsys, tmp_path, args, expected):
    code, err = run_cli(capsys, "pretrain", f"hydra.run.dir={tmp_path}", *args)
    assert code == 2
    assert expected in err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert not (tmp_path / "checkpoints").exists()


def test_unknown_command(capsys):
    code, err = run_cli(capsys, "pretrian")
    assert code == 2 and "did you mean 'pretrain'" in err


def test_top_level_help_lists_commands_with_examples(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "pretrain" in out and "llmtune pretrain model=" in out


def test_command_help_lists_groups_and_options(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    out = capsys.readouterr().out
    for group in ("model:", "tokenizer:", "data:", "objective:", "optim:", "hardware:"):
        assert group in out
    assert "bert-small" in out and "gpt2-small" in out


def test_cfg_job_prints_composed_config(capsys):
    main(["pretrain", "model=bert-small", "optim.lr=0.002", "--cfg", "job"])
    out = capsys.readouterr().out
    assert "d_model: 512" in out and "lr: 0.002" in out
