"""`llmtune prune` end to end: a tiny fine-tuned BERT classifier loses a block and half of
every MLP, the result is a normal checkpoint that evaluates (to the metric prune reported),
fine-tunes and exports; bad requests are one-line errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from llmtune.cli import main
from llmtune.loading import load_checkpoint
from llmtune.prune import importance, surgery
from tests.conftest import make_documents
from tests.e2e.helpers import FAST, TINY_BERT, TINY_GPT, evaluate, pretrain, write_jsonl
from tests.e2e.test_finetune import sentiment_rows


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("prune")
    corpus = write_jsonl(root / "corpus.jsonl", [{"text": d} for d in make_documents(60)])
    pretrain(root / "bert", corpus, *TINY_BERT, "model.n_layers=3", "train.max_steps=3")
    pretrain(root / "gpt", corpus, *TINY_GPT, "train.max_steps=3")
    train = write_jsonl(root / "train.jsonl", sentiment_rows(96, 1))
    test = write_jsonl(root / "test.jsonl", sentiment_rows(32, 2))
    main(
        ["finetune", f"hydra.run.dir={root / 'cls'}", f"init_from={root / 'bert'}",
         "objective=seq_cls", "data=files", f"data.train={train}", f"data.validation={test}",
         *FAST, "train.max_steps=20", "train.eval_every=20"]
    )  # fmt: skip
    return {"root": root, "cls": root / "cls", "gpt": root / "gpt", "train": train, "test": test}


def prune(task: dict, out: Path, *extra: str) -> None:
    main(
        ["prune", f"ckpt={task['cls']}", f"out={out}", f"data.train={task['train']}",
         f"data.test={task['test']}", "prune.latency_runs=1", "prune.batches=2",
         f"hydra.run.dir={out}.run", *extra]
    )  # fmt: skip


def test_pruned_checkpoint_is_a_normal_smaller_one(task, tmp_path, capsys):
    out = tmp_path / "pruned"
    prune(task, out, "prune.layers=1", "prune.ffn_fraction=0.5")
    text = capsys.readouterr().out
    assert "blocks: 3 -> 2" in text and "MLP width: 128 -> 64" in text
    step = out / "checkpoints" / "step-00000020"
    files = ["config.yaml", "meta.json", "model.safetensors", "tokenizer.json"]
    assert sorted(p.name for p in step.iterdir()) == files
    report = json.loads((tmp_path / "pruned.run" / "results.json").read_text())
    assert report["after"]["parameters"] < report["before"]["parameters"]
    loaded = load_checkpoint(out)
    assert (loaded.config.model.n_layers, loaded.config.model.d_ff) == (2, 64)
    assert loaded.meta["labels"] == ["neg", "pos"] and loaded.meta["pruned_from"]
    # evaluate reads it as any checkpoint, to the accuracy prune reported
    results = evaluate(tmp_path / "eval", f"ckpt={out}", f"data.test={task['test']}")
    assert results["accuracy"] == pytest.approx(report["after"]["value"])
    # a recovery fine-tune starts from it; an export verifies against it
    main(
        ["finetune", f"hydra.run.dir={tmp_path / 'ft'}", f"init_from={out}", "objective=seq_cls",
         "data=files", f"data.train={task['train']}", f"data.validation={task['test']}",
         *FAST, "train.max_steps=2", "train.eval_every=2"]
    )  # fmt: skip
    assert load_checkpoint(tmp_path / "ft").config.model.n_layers == 2
    main(["export", f"ckpt={out}", "format=pt2", f"out={tmp_path / 'pt2'}"])
    assert "verified:" in capsys.readouterr().out


def test_heads_pruned_by_importance_leave_a_checkpoint_that_trains_and_exports(
    task, tmp_path, capsys
):
    out = tmp_path / "heads"
    prune(task, out, "prune.heads=2")
    assert "attention heads: 6 -> 4" in capsys.readouterr().out
    loaded = load_checkpoint(out)
    heads = loaded.config.model.layer_heads
    assert sorted(heads) == [1, 1, 2] and loaded.meta["pruning"]["head_importance"]
    assert [len(k) for k in loaded.meta["pruning"]["kept_heads"]] == list(heads)
    main(
        ["finetune", f"hydra.run.dir={tmp_path / 'ft'}", f"init_from={out}", "objective=seq_cls",
         "data=files", f"data.train={task['train']}", f"data.validation={task['test']}",
         *FAST, "train.max_steps=1", "train.eval_every=1"]
    )  # fmt: skip
    assert load_checkpoint(tmp_path / "ft").config.model.layer_heads == heads
    main(["export", f"ckpt={tmp_path / 'ft'}", "format=pt2", f"out={tmp_path / 'pt2'}"])
    assert "verified:" in capsys.readouterr().out
    # transformers' configs hold one head count for all layers: said, not written wrongly
    with pytest.raises(SystemExit) as exit_info:
        main(["export", f"ckpt={out}", "format=hf", f"out={tmp_path / 'hf'}"])
    assert exit_info.value.code == 2
    assert "a head-pruned model has no Hugging Face config" in capsys.readouterr().err


def test_a_language_model_prunes_by_its_own_loss(task, tmp_path, capsys):
    out = tmp_path / "gpt-pruned"
    corpus = task["root"] / "corpus.jsonl"
    main(
        ["prune", f"ckpt={task['gpt']}", f"out={out}", f"data.train={corpus}",
         f"data.test={corpus}", "prune.ffn_fraction=0.25", "prune.heads=1", "prune.latency_runs=1",
         "prune.batches=2", "evaluate.max_examples=8", f"hydra.run.dir={tmp_path / 'run'}"]
    )  # fmt: skip
    assert "MLP width: 128 -> 96" in capsys.readouterr().out
    pruned = load_checkpoint(out)
    assert pruned.config.model.d_ff == 96 and sorted(pruned.config.model.layer_heads) == [1, 2]
    main(["export", f"ckpt={out}", "format=pt2", f"out={tmp_path / 'pt2'}"])
    assert "verified:" in capsys.readouterr().out


def test_removing_nothing_changes_no_logit_and_a_skipped_block_is_the_dropped_one(task):
    loaded = load_checkpoint(task["cls"])
    model = loaded.model
    ids = torch.randint(5, loaded.config.model.vocab_size, (2, 9))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    everything = surgery.everything(model)
    same = surgery.pruned(model, everything, 2)
    with torch.no_grad():
        torch.testing.assert_close(same.features(batch), model.features(batch))
        keep = dataclasses.replace(everything, blocks=[0, 2])
        dropped = surgery.pruned(model, keep, 2).features(batch)
        handle = importance.blocks_of(model)[1].register_forward_hook(importance._skip)
        skipped = model.features(batch)
        handle.remove()
    torch.testing.assert_close(dropped, skipped)


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ([], "nothing to prune"),
        (["prune.layers=3"], "at least one must stay"),
        (["prune.ffn_fraction=1.0"], "prune.ffn_fraction=1.0: must be in [0, 1)"),
    ],
)
def test_bad_settings_are_one_line_errors(task, tmp_path, capsys, extra, says):
    with pytest.raises(SystemExit) as exit_info:
        prune(task, tmp_path / "o", *extra)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
    assert not (tmp_path / "o" / "checkpoints").exists()


def test_a_non_empty_out_is_refused(task, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit):
        prune(task, out, "prune.layers=1")
    assert "is not an empty folder" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"


def test_an_out_inside_the_checkpoint_is_refused(task, tmp_path, capsys):
    out = task["cls"] / "pruned"
    with pytest.raises(SystemExit):
        prune(task, out, "prune.layers=1")
    assert "which prune reads" in capsys.readouterr().err
    assert not out.exists()
