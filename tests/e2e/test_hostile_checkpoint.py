"""A checkpoint is a closed box: loading one (evaluate, export, finetune, resume) never reads or
names a file outside its step folder, whatever its files say, and a malformed file is one line
naming it. Every hostile folder is built here from a copy of a real tiny run."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from llmtune.cli import main
from tests.e2e.helpers import FAST, TINY_GPT, fails, metrics

STEP6 = "checkpoints/step-00000006"
SECRET = "TOPSECRET-4821"
RESUME = [*TINY_GPT, "train.save_every=3", "train.eval_every=3", "train.max_steps=9"]


@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder beside the run that a checkpoint must never reach, holding a secret."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.json").write_text(json.dumps({SECRET: 1}))
    return folder


@pytest.fixture
def run(tmp_path, tiny_gpt_run) -> Path:
    return Path(shutil.copytree(tiny_gpt_run, tmp_path / "run", symlinks=True))


def rechecksum(step: Path, **meta_changes) -> None:
    """Make meta.json agree with the (tampered) files: only the closed-box rules can object."""
    meta = json.loads((step / "meta.json").read_text())
    for name in list(meta["files"]):
        if (step / name).is_file():
            meta["files"][name] = hashlib.sha256((step / name).read_bytes()).hexdigest()
    meta.update(meta_changes)
    (step / "meta.json").write_text(json.dumps(meta))


def evaluate_fails(capsys, tmp_path, ckpt, corpus) -> str:
    err = fails(
        capsys,
        "evaluate",
        f"ckpt={ckpt}",
        f"hydra.run.dir={tmp_path / 'evaluate'}",
        "hardware=cpu",
        f"data.test={corpus}",
    )
    assert SECRET not in err and "/outside" not in err, err
    return err


def resume_fails(capsys, run: Path, corpus: Path) -> str:
    args = [f"hydra.run.dir={run}", "data=files", f"data.train={corpus}", *FAST, *RESUME]
    err = fails(capsys, "pretrain", *args)
    assert SECRET not in err and "/outside" not in err, err
    return err


@pytest.mark.parametrize("pointer", ["latest", "best"])
@pytest.mark.parametrize("where", ["relative", "absolute"])
def test_a_pointer_never_leads_outside_the_run(
    tmp_path, run, outside, tiny_gpt_run, tiny_corpus, capsys, pointer, where
):
    # main: evaluate and resume silently loaded the other folder's checkpoint
    other = Path(shutil.copytree(tiny_gpt_run, outside / "other", symlinks=True))
    target = other / "checkpoints/step-00000003"
    text = str(target) if where == "absolute" else "../../outside/other/checkpoints/step-00000003"
    (run / "checkpoints" / pointer).write_text(text + "\n")
    if pointer == "latest":  # else evaluate reads `best` first
        (run / "checkpoints/best").unlink()
    err = evaluate_fails(capsys, tmp_path, run, tiny_corpus)
    assert f"{run / 'checkpoints' / pointer}: does not name a step folder beside it" in err
    if pointer == "latest":
        assert "does not name a step folder" in resume_fails(capsys, run, tiny_corpus)


@pytest.mark.parametrize(
    "entry", ["../../../outside/secret.json", "/etc/hostname", "extra.bin", "meta.json"]
)
def test_meta_json_lists_only_the_formats_own_files(
    tmp_path, run, outside, tiny_corpus, capsys, entry
):
    # main: '..' and absolute entries were read and hashed (and named); unknown names passed
    step = run / STEP6
    (step / "extra.bin").write_text("x")
    meta = json.loads((step / "meta.json").read_text())
    meta["files"][entry] = "0" * 64
    (step / "meta.json").write_text(json.dumps(meta))
    err = evaluate_fails(capsys, tmp_path, step, tiny_corpus)
    assert f"{step / 'meta.json'}: 'files' lists" in err and "not a checkpoint file" in err
    assert "/etc" not in err and ".." not in err


@pytest.mark.parametrize(
    ("field", "value"),
    [("files", ["model.safetensors"]), ("heads", "lm"), ("labels", {"a": 1}), ("base", "x")],
)
def test_meta_json_of_the_wrong_shape_is_one_line(tmp_path, run, tiny_corpus, capsys, field, value):
    # main: a list of files, or a string of heads, ended in a traceback
    step = run / STEP6
    meta = json.loads((step / "meta.json").read_text())
    meta[field] = value
    (step / "meta.json").write_text(json.dumps(meta))
    err = evaluate_fails(capsys, tmp_path, step, tiny_corpus)
    assert f"{step / 'meta.json'}: '{field}'" in err


def test_a_symlink_inside_a_step_folder_is_refused(tmp_path, run, outside, tiny_corpus, capsys):
    # main: the link was followed (a traceback showed what it parsed)
    step = run / STEP6
    (step / "tokenizer.json").unlink()
    (step / "tokenizer.json").symlink_to(outside / "secret.json")
    rechecksum(step)
    err = evaluate_fails(capsys, tmp_path, step, tiny_corpus)
    assert f"{step / 'tokenizer.json'}: a symbolic link" in err


def test_a_symlinked_step_folder_is_never_loaded(
    tmp_path, run, outside, tiny_gpt_run, tiny_corpus, capsys
):
    # main: evaluate loaded the linked folder, outside the run
    other = Path(shutil.copytree(tiny_gpt_run, outside / "other", symlinks=True))
    root = run / "checkpoints"
    (root / "step-00000009").symlink_to(other / STEP6, target_is_directory=True)
    (root / "latest").write_text("step-00000009\n")
    (root / "best").unlink()
    err = evaluate_fails(capsys, tmp_path, run, tiny_corpus)
    assert f"{root / 'step-00000009'}: a symbolic link" in err
    assert "a symbolic link" in resume_fails(capsys, run, tiny_corpus)


def test_pruning_neither_follows_nor_crashes_on_a_symlinked_step_folder(
    tmp_path, run, outside, tiny_gpt_run, tiny_corpus
):
    # main: shutil.rmtree on the link raised, after the new checkpoint was saved
    other = Path(shutil.copytree(tiny_gpt_run, outside / "other", symlinks=True))
    root = run / "checkpoints"
    (root / "step-00000001").symlink_to(other / "checkpoints/step-00000003")
    args = [f"hydra.run.dir={run}", "data=files", f"data.train={tiny_corpus}", *FAST, *RESUME]
    main(["pretrain", *args, "checkpoint.keep_last=1"])
    assert (other / "checkpoints/step-00000003/model.safetensors").is_file()
    assert (root / "step-00000001").is_symlink()
    assert (root / "latest").read_text().strip() == "step-00000009"
    assert metrics(run)[0][-1]["step"] == 9


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("tokenizer.json", '{"version": "1.0", "model": 7}', "not a valid tokenizer"),
        ("config.yaml", "model: [unclosed", "not valid YAML"),
        ("model.safetensors", (2**40).to_bytes(8, "little") + b"{}", "unreadable"),
    ],
)
def test_a_malformed_file_is_one_line_naming_it(
    tmp_path, run, tiny_corpus, capsys, name, content, says
):
    # main: a malformed tokenizer.json ended in a traceback
    step = run / STEP6
    data = content.encode() if isinstance(content, str) else content
    (step / name).write_bytes(data)
    rechecksum(step)
    err = evaluate_fails(capsys, tmp_path, step, tiny_corpus)
    assert f"{step / name}: {says}" in err


def test_config_values_of_the_wrong_type_name_the_file(tmp_path, run, tiny_corpus, capsys):
    # main: "model.n_layers='many': expected ..." without saying which file
    step = run / STEP6
    text = (step / "config.yaml").read_text().replace("n_layers: 2", "n_layers: many")
    (step / "config.yaml").write_text(text)
    rechecksum(step)
    err = evaluate_fails(capsys, tmp_path, step, tiny_corpus)
    assert f"{step / 'config.yaml'}: model.n_layers='many'" in err


def test_a_config_cannot_read_the_environment(tmp_path, run, tiny_corpus, capsys, monkeypatch):
    # main: OmegaConf resolved ${oc.env:...} and the error showed the variable's value
    monkeypatch.setenv("LLMTUNE_TEST_SECRET", SECRET)
    step = run / STEP6
    text = (step / "config.yaml").read_text()
    (step / "config.yaml").write_text(
        text.replace("seed: 0", "seed: ${oc.env:LLMTUNE_TEST_SECRET}")
    )
    rechecksum(step)
    err = evaluate_fails(capsys, tmp_path, step, tiny_corpus)
    assert f"{step / 'config.yaml'}: seed=" in err


@pytest.mark.parametrize("damage", ["truncated", "wrong_structure"])
def test_a_bad_train_state_is_one_line_on_resume(run, tiny_corpus, capsys, damage):
    # main: a train_state.pt of another structure ended in a KeyError traceback
    import torch

    step = run / STEP6
    path = step / "train_state.pt"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    else:
        torch.save({"progress": {"step": 6}, "optimizer": {}, "data": {}, "rng": {}}, path)
    rechecksum(step)
    err = resume_fails(capsys, run, tiny_corpus)
    assert str(path) in err


def test_finetune_and_export_refuse_a_hostile_checkpoint(tmp_path, run, outside, capsys):
    # main: finetune named (and tried to read) /etc; export followed a symlinked weights file
    (run / "checkpoints/best").write_text("/etc\n")
    train = outside / "train.jsonl"
    train.write_text("".join(json.dumps({"text": "a b", "label": i % 2}) + "\n" for i in range(8)))
    err = fails(
        capsys, "finetune", f"init_from={run}", f"data.train={train}", "hardware=cpu",
        f"hydra.run.dir={tmp_path / 'ft'}",
    )  # fmt: skip
    assert "does not name a step folder" in err and "/etc" not in err
    step = run / STEP6
    elsewhere = outside / "weights.safetensors"
    shutil.copy(step / "model.safetensors", elsewhere)
    (step / "model.safetensors").unlink()
    (step / "model.safetensors").symlink_to(elsewhere)
    err = fails(
        capsys, "export", f"ckpt={step}", "format=hf", f"out={tmp_path / 'hf'}",
        f"hydra.run.dir={tmp_path / 'export'}",
    )  # fmt: skip
    assert f"{step / 'model.safetensors'}: a symbolic link" in err and "/outside" not in err
