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
        (["model=bert-tiny", "objective=clm"], "objective=clm needs a gpt/llama model"),
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


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # a group the command does not use: Hydra's multi-line "Could not override" (issue 17)
        (["pretrain", "method=lora"], "method=lora: llmtune pretrain has no method group"),
        (["evaluate", "ckpt=x", "data.test=t", "model=bert-tiny"], "has no model group"),
        # a section the command does not use: accepted and ignored before
        (["evaluate", "ckpt=x", "data.test=t", "train.max_steps=5"], "does not use train"),
        (["export", "ckpt=x", "format=hf", "out=o", "hardware.threads=2"], "does not use hardware"),
        # a key of another choice: accepted and ignored before
        (
            ["pretrain", "objective=clm", "objective.mask_prob=0.2"],
            "'objective.mask_prob' is a key",
        ),
        (["pretrain", "model.type_vocab_size=3"], "'model.type_vocab_size' is a key of model"),
        (["pretrain", "data.name=wiki"], "'data.name' is a key of data.source=hub"),
        (
            ["finetune", "init_from=x", "method.rank=4"],
            "'method.rank' is a key of method.name=lora",
        ),
        # a traceback from torch.set_num_threads before (issue 17)
        (["pretrain", "hardware.threads=-1"], "hardware.threads=-1: must be >= 0"),
        # another command's experiment: Hydra's "Could not override 'model'" before
        (
            ["finetune", "init_from=x", "experiment=bert-tiny-builtin"],
            "experiment=bert-tiny-builtin: configures llmtune pretrain, not llmtune finetune",
        ),
    ],
)
def test_keys_and_groups_a_command_does_not_use_are_one_line(capsys, tmp_path, args, expected):
    code, err = run_cli(capsys, args[0], f"hydra.run.dir={tmp_path}", *args[1:])
    assert code == 2, err
    assert expected in err and len(err.splitlines()) == 1, err


def _user_configs(tmp_path) -> str:
    """A user config folder with one model preset (joins with hydra.searchpath)."""
    folder = tmp_path / "my-configs" / "model"
    folder.mkdir(parents=True)
    (folder / "gpt-micro.yaml").write_text("# mine\nfamily: gpt\nd_model: 64\nn_layers: 1\n")
    return f"hydra.searchpath=[file://{tmp_path / 'my-configs'}]"


def test_searchpath_options_are_checked_in_one_line(capsys, tmp_path):
    """With hydra.searchpath the override check was skipped: a misspelt option ended in
    Hydra's multi-line report (issue 17)."""
    search = _user_configs(tmp_path)
    code, err = run_cli(capsys, "pretrain", f"hydra.run.dir={tmp_path}", search, "model=gpt-mcro")
    assert code == 2 and "did you mean 'gpt-micro'" in err and len(err.splitlines()) == 1, err


def test_searchpath_keeps_the_key_check_and_valid_keys(capsys, tmp_path):
    """With hydra.searchpath, keys went to Hydra unchecked and unconverted: a valid key such
    as model.dropout=0 was refused as not in struct, a misspelt one passed (issue 17)."""
    search = _user_configs(tmp_path)
    code, err = run_cli(capsys, "pretrain", search, "model=gpt-micro", "model.dropuot=0")
    assert code == 2 and "did you mean 'dropout'" in err, err
    main(["pretrain", search, "model=gpt-micro", "model.dropout=0", "--cfg", "job"])
    out = capsys.readouterr().out
    assert "d_model: 64" in out and "dropout: 0" in out


def test_a_users_own_group_can_be_added(capsys, tmp_path):
    """+<group>=<option> of a group only a user's config folder has is checked, not refused."""
    folder = tmp_path / "my-configs" / "recipe"
    folder.mkdir(parents=True)
    (folder / "short.yaml").write_text("# @package _global_\n# mine\ntrain:\n  max_steps: 7\n")
    search = f"hydra.searchpath=[file://{tmp_path / 'my-configs'}]"
    code, err = run_cli(capsys, "pretrain", search, "+recipe=shrt")
    assert code == 2 and "did you mean 'short'" in err, err
    main(["pretrain", search, "+recipe=short", "--cfg", "job"])
    assert "max_steps: 7" in capsys.readouterr().out


def test_an_unknown_top_level_key_lists_this_commands_keys_once(capsys):
    code, err = run_cli(capsys, "pretrain", "typo.key=1")
    assert code == 2 and len(err.splitlines()) == 1
    listed = err.split("valid keys: ")[1].split(", ")
    assert len(listed) == len(set(listed))  # groups that are also sections appear once
    assert {"train", "model", "experiment", "seed"} <= set(listed)
    assert not {"command", "ckpt", "prompts", "serve"} & set(listed)  # not pretrain's keys
