"""`llmtune export` refusals: bad keys, missing or corrupt checkpoints, an occupied output
folder, a missing optional extra, a failed verification. Each is one line, nothing is lost."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

from llmtune.cli import main
from tests.e2e.helpers import TINY_BERT, pretrain


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    from tests.conftest import make_documents

    root = tmp_path_factory.mktemp("bert")
    corpus = root / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in make_documents(40)))
    steps = ["train.max_steps=2", "train.eval_every=2", "train.save_every=2"]
    pretrain(root / "run", corpus, *TINY_BERT, *steps)
    return root / "run"


def _fails(capsys, *args: str, code: int = 2) -> str:
    """Run `llmtune export args`; assert it exits with `code` and one line on stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(["export", *args])
    assert exit_info.value.code == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("llmtune: error: ") and len(err.splitlines()) == 1, err
    return err


def _run_dir(tmp_path: Path) -> str:
    return f"hydra.run.dir={tmp_path / 'run'}"


def test_required_keys_and_unknown_format(tmp_path, ckpt, capsys):
    run = _run_dir(tmp_path)
    assert "format is required" in _fails(capsys, f"ckpt={ckpt}", f"out={tmp_path / 'o'}", run)
    err = _fails(capsys, f"ckpt={ckpt}", "format=tflite", f"out={tmp_path / 'o'}", run)
    assert "format='tflite'" in err and "onnx" in err
    assert "out is required" in _fails(capsys, f"ckpt={ckpt}", "format=hf", run)
    err = _fails(capsys, f"ckpt={ckpt}", "format=int8", f"out={tmp_path / 'o'}", run)
    assert "data.test" in err
    assert not (tmp_path / "o").exists()


def test_missing_and_corrupt_checkpoints(tmp_path, ckpt, capsys):
    out, run = f"out={tmp_path / 'o'}", _run_dir(tmp_path)
    err = _fails(capsys, f"ckpt={tmp_path / 'nowhere'}", "format=pt2", out, run)
    assert str(tmp_path / "nowhere") in err
    broken = tmp_path / "broken"
    shutil.copytree(ckpt / "checkpoints", broken)
    step = next(broken.glob("step-*"))
    weights = step / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64] + b"\0" * 64)
    err = _fails(capsys, f"ckpt={step}", "format=pt2", out, run)
    assert "model.safetensors" in err
    assert not (tmp_path / "o").exists()
    assert not list(tmp_path.glob(".o.partial*")), "the staging folder was left behind"


def test_occupied_output_is_kept_unless_overwrite(tmp_path, ckpt, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    err = _fails(capsys, f"ckpt={ckpt}", "format=torchscript", f"out={out}", _run_dir(tmp_path))
    assert "export.overwrite=true" in err and str(out) in err
    assert (out / "keep.txt").read_text() == "mine"
    # an artifact that disagrees with the model (simulated: the reference moves by 0.5) fails
    # verification, exit 1, and the old folder stays
    import llmtune.export.verify as verify

    real = verify.reference_logits
    shifted = lambda module, inputs: tuple(t + 0.5 for t in real(module, inputs))  # noqa: E731
    monkeypatch.setattr(verify, "reference_logits", shifted)
    args = [f"ckpt={ckpt}", "format=torchscript", f"out={out}", "export.overwrite=true"]
    err = _fails(capsys, *args, _run_dir(tmp_path), code=1)
    assert "verification failed" in err and "5.00e-01" in err and (out / "keep.txt").is_file()
    assert not list(tmp_path.glob(".out.partial*")), "the staging folder was left behind"
    monkeypatch.setattr(verify, "reference_logits", real)
    main(["export", *args, _run_dir(tmp_path)])
    assert "verified:" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "export.json",
        "model.pt",
        "tokenizer.json",
    ]


@pytest.mark.parametrize(
    ("fmt", "module"),
    [("hf", "transformers"), ("onnx", "onnxruntime"), ("int8wo", "torchao"), ("int4wo", "torchao")],
)
def test_missing_extra_names_it(tmp_path, ckpt, capsys, monkeypatch, fmt, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    test = f"data.test={next(ckpt.parent.glob('c.jsonl'))}"  # the quantized formats need one
    err = _fails(
        capsys, f"ckpt={ckpt}", f"format={fmt}", f"out={tmp_path / 'o'}", test, _run_dir(tmp_path)
    )
    assert module in err and "pip install 'llmtune[export]'" in err
    assert not (tmp_path / "o").exists()


def test_int8_without_torchao_falls_back_to_torch_ao_and_says_it_is_deprecated(
    tmp_path, ckpt, capsys, monkeypatch
):
    import llmtune.export.quantize as quantize

    monkeypatch.setattr(quantize, "torchao_available", lambda: False)
    corpus = next(ckpt.parent.glob("c.jsonl"))
    out = tmp_path / "int8"
    args = [f"ckpt={ckpt}", "format=int8", f"out={out}", f"data.test={corpus}"]
    main(["export", *args, "export.latency_runs=1", "evaluate.max_examples=8", _run_dir(tmp_path)])
    text = capsys.readouterr().out
    assert "torchao is not installed" in text and "deprecated" in text
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["backend"] == "torch.ao (deprecated)" and "model.pt" in manifest["files"]
    assert torch.jit.load(str(out / "model.pt")) is not None


def test_int8_metric_drop_above_the_bar_fails(tmp_path, ckpt, capsys, monkeypatch):
    import llmtune.export.quantized as int8

    real = int8.metric

    def worse_when_quantized(loaded, job):  # as if int8 lost 10% of the loss
        name, value, higher = real(loaded, job)
        quantized = loaded.model is not job.loaded.model
        return name, value * 1.1 if quantized else value, higher

    monkeypatch.setattr(int8, "metric", worse_when_quantized)
    corpus = next(ckpt.parent.glob("c.jsonl"))
    out = tmp_path / "int8"
    args = [f"ckpt={ckpt}", "format=int8", f"out={out}", f"data.test={corpus}"]
    args += ["export.latency_runs=1", "evaluate.max_examples=8", _run_dir(tmp_path)]
    err = _fails(capsys, *args, code=1)
    # ~10% worse (the int8 loss itself differs a little from the fp32 one)
    assert re.search(
        r"worse by \+(9|10)\.\d\d% relative\) exceeds export.max_metric_drop=0.02", err
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("fmt", "target", "what"),
    [
        ("pt2", "torch.export.export", "torch.export could not capture the model"),
        ("onnx", "onnxruntime.InferenceSession", "onnxruntime could not run"),
    ],
)
def test_a_failing_exporter_or_runtime_is_one_line(
    tmp_path, ckpt, capsys, monkeypatch, fmt, target, what
):
    """A failure inside torch.export or onnxruntime is not a traceback: one line, exit 2."""
    pytest.importorskip(target.split(".")[0])

    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure\n  and the rest of a long report")

    monkeypatch.setattr(target, broken)
    out = tmp_path / "o"
    err = _fails(capsys, f"ckpt={ckpt}", f"format={fmt}", f"out={out}", _run_dir(tmp_path))
    assert f"format={fmt}: {what}" in err, err
    assert re.search(r"\(simulated failure\); .*(try|use) format=\w+$", err.strip()), err
    assert ".partial" not in err and not out.exists()
    assert not list(tmp_path.glob(".o.partial*")), "the staging folder was left behind"
