"""End-to-end T5 through the real CLI, in-process: span-corruption pretraining, seq2seq
fine-tuning with every method, evaluate's generated targets and their metrics, prompts."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from llmtune.cli import main
from tests.e2e.helpers import FAST, evaluate, metrics, pretrain, write_jsonl

TINY_T5 = ["model=t5-tiny", "model.max_seq_len=32", "tokenizer.vocab_size=400"]
WORDS = [
    "red",
    "green",
    "blue",
    "cat",
    "dog",
    "bird",
    "river",
    "hill",
    "tree",
    "stone",
    "cloud",
    "rain",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from tests.conftest import make_documents

    docs = [{"text": d + " " + " ".join(WORDS)} for d in make_documents(100)]
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "c.jsonl", docs)


@pytest.fixture(scope="module")
def t5_base(tmp_path_factory, corpus) -> Path:
    run = tmp_path_factory.mktemp("t5") / "run"
    pretrain(run, corpus, *TINY_T5, "train.max_steps=30", "train.eval_every=10")
    return run


def pair_rows(n: int, seed: int) -> list[dict]:
    """target = the source's first two words: learnable only through cross-attention."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 6))]
        rows.append({"source": " ".join(words), "target": " ".join(words[:2])})
    return rows


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> tuple[Path, Path, Path]:
    folder = tmp_path_factory.mktemp("pairs")
    return (
        write_jsonl(folder / "train.jsonl", pair_rows(256, 1)),
        write_jsonl(folder / "val.jsonl", pair_rows(32, 2)),
        write_jsonl(folder / "test.jsonl", pair_rows(12, 3)),
    )


def test_span_corruption_pretraining_loss_falls(t5_base):
    train, evals = metrics(t5_base)
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert train[-1]["loss"] < train[0]["loss"]
    assert "val_span_corruption_accuracy" in evals[-1]
    step = t5_base / "checkpoints" / (t5_base / "checkpoints" / "latest").read_text().strip()
    config = (step / "config.yaml").read_text()
    assert "family: t5" in config and "name: span_corruption" in config


METHODS = {
    "full": [],
    "freeze": ["method.freeze_layers=2"],
    "lora": ["method.rank=8", "method.targets=[qkv,q,kv,fc]", "optim.lr=1e-2"],
    "prefix": ["method.n_tokens=4", "optim.lr=3e-2"],
    "prompt": ["method.n_tokens=4", "optim.lr=3e-2"],
}


@pytest.mark.parametrize("method", list(METHODS))
def test_seq2seq_finetune_with_every_method_learns_and_generates(t5_base, pairs, tmp_path, method):
    train, val, test = pairs
    run = tmp_path / "ft"
    main(
        [
            "finetune",
            f"hydra.run.dir={run}",
            f"init_from={t5_base}",
            "objective=seq2seq",
            "data=files",
            f"data.train={train}",
            f"data.validation={val}",
            f"method={method}",
            *FAST,
            "train.max_steps=24",
            "train.eval_every=12",
            "train.log_every=12",
            *METHODS[method],
        ]
    )
    _, evals = metrics(run)
    assert evals[-1]["val_seq2seq_loss"] < evals[0]["val_seq2seq_loss"]
    results = evaluate(
        tmp_path / "eval",
        f"ckpt={run}",
        "data=files",
        f"data.test={test}",
        "evaluate.max_new_tokens=4",
        "evaluate.num_beams=2",
    )
    assert results["task"] == "seq2seq" and results["n_examples"] == 12
    for key in ("exact_match", "rouge1", "rouge2", "rougeL", "bleu", "chrf", "loss"):
        assert key in results, key
    rows = [
        json.loads(r) for r in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 12 and {"source", "prediction", "target"} <= set(rows[0])


def _hf_t5_folder(folder: Path, transformers) -> Path:
    """A random T5 v1.1 (gated-GELU, untied head) and a unigram tokenizer, saved by
    transformers as a user's T5ForConditionalGeneration folder would be."""
    import torch

    from llmtune.data.t5_tokenizer import train_t5_tokenizer
    from tests.conftest import make_documents

    tok = train_t5_tokenizer([*make_documents(100), " ".join(WORDS)], vocab_size=400)
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(folder)
    config = transformers.T5Config(
        vocab_size=tok.get_vocab_size(),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=3,
        num_heads=4,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    torch.manual_seed(0)
    transformers.T5ForConditionalGeneration(config).save_pretrained(folder)
    return folder


def _logits(model, ids, mask, dec):
    return model.heads["lm"](model(ids, attention_mask=mask, decoder_input_ids=dec))


@pytest.mark.slow
def test_hf_t5_folder_imports_finetunes_and_exports_back(tmp_path, pairs):
    """init_from=hf:<T5ForConditionalGeneration folder> reads the same logits; the fine-tuned
    model exported with format=hf reloads in transformers with the same logits (1e-4) and the
    same greedy generations."""
    import torch

    from llmtune.config.schema import EvaluateConfig
    from llmtune.loading import load_checkpoint
    from llmtune.models.generation import generate

    transformers = pytest.importorskip("transformers")
    folder = _hf_t5_folder(tmp_path / "hf", transformers)
    source = transformers.T5ForConditionalGeneration.from_pretrained(folder).eval()
    imported = load_checkpoint(f"hf:{folder}", torch.device("cpu")).model
    ids = torch.tensor([[5, 9, 14, 30, 1], [7, 8, 1, 0, 0]])
    mask = (torch.arange(5) < torch.tensor([[5], [3]])).long()
    dec = torch.tensor([[0, 4, 12, 6], [0, 3, 3, 9]])
    with torch.no_grad():
        theirs = source(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        assert (_logits(imported, ids, mask, dec) - theirs).abs().max() < 1e-4
    train, val, _ = pairs
    run = tmp_path / "ft"
    main(
        [
            "finetune",
            f"hydra.run.dir={run}",
            f"init_from=hf:{folder}",
            "objective=seq2seq",
            "data=files",
            f"data.train={train}",
            f"data.validation={val}",
            *FAST,
            "train.max_steps=10",
            "train.eval_every=10",
        ]
    )
    out = tmp_path / "export"
    main(["export", f"ckpt={run}", "format=hf", f"out={out}", f"hydra.run.dir={out}.run"])
    tuned = load_checkpoint(run, torch.device("cpu")).model
    reloaded = transformers.T5ForConditionalGeneration.from_pretrained(out).eval()
    with torch.no_grad():
        ours = _logits(tuned, ids, mask, dec)
        theirs = reloaded(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    assert (ours - theirs).abs().max() < 1e-4
    assert (ours - _logits(imported, ids, mask, dec)).abs().max() > 1e-3  # it did train
    rows = [r[m.bool()].tolist() for r, m in zip(ids, mask)]
    greedy = generate(tuned, rows, EvaluateConfig(max_new_tokens=8), eos_id=1)
    # without a cache: transformers 5.25 sizes it by the encoder's layer count (2, not 3)
    hf_greedy = reloaded.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=8, use_cache=False
    )
    for g, row in zip(greedy, hf_greedy.tolist()):
        row = row[1:]
        assert g.token_ids == (row[: row.index(1) + 1] if 1 in row else row)


def test_other_formats_of_t5_are_refused_in_one_line(t5_base, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "export",
                f"ckpt={t5_base}",
                "format=torchscript",
                f"out={tmp_path / 'ts'}",
                f"hydra.run.dir={tmp_path / 'run'}",
            ]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("llmtune: error: ") and len(err.splitlines()) == 1, err
    assert (
        "format=torchscript: t5 (encoder-decoder) checkpoints export as format=hf, onnx, pt2" in err
    )
    assert not (tmp_path / "ts").exists()


def _greedy_with_graphs(encoder, decoder, ids, eos_id: int, steps: int = 8) -> list[list[int]]:
    """Greedy decoding as the export's README does it: the encoder once, then the decoder on
    the growing target; each row stops at EOS."""
    import torch

    mask = torch.ones_like(ids)
    states = torch.as_tensor(encoder(ids, mask))
    target = torch.zeros(ids.shape[0], 1, dtype=torch.long)  # T5 starts from <pad> = 0
    for _ in range(steps):
        logits = torch.as_tensor(decoder(target, states, mask))
        target = torch.cat([target, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    rows = [row[1:] for row in target.tolist()]
    return [row[: row.index(eos_id) + 1] if eos_id in row else row for row in rows]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
def test_t5_exports_encoder_and_decoder_graphs_that_generate_like_llmtune(t5_base, tmp_path, fmt):
    """format=onnx / pt2 write encoder + decoder graphs: their logits match the eager model's
    (the export verifies them) and greedy decoding through them writes llmtune's tokens."""
    import torch

    from llmtune.config.schema import EvaluateConfig
    from llmtune.loading import load_checkpoint
    from llmtune.models.generation import generate

    if fmt == "onnx":
        onnxruntime = pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    out = tmp_path / fmt
    main(["export", f"ckpt={t5_base}", f"format={fmt}", f"out={out}", f"hydra.run.dir={out}.run"])
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["files"] == [f"encoder.{fmt}", f"decoder.{fmt}", "tokenizer.json"]
    assert manifest["verification"].startswith("verified: max |logit difference|")
    if fmt == "pt2":
        encoder, decoder = (torch.export.load(out / f).module() for f in manifest["files"][:2])
    else:
        sessions = [onnxruntime.InferenceSession(str(out / f)) for f in manifest["files"][:2]]

        def runner(session, names):
            return lambda *xs: session.run(None, {n: x.numpy() for n, x in zip(names, xs)})[0]

        graphs = manifest["graphs"]
        encoder = runner(sessions[0], graphs["encoder"]["inputs"])
        decoder = runner(sessions[1], graphs["decoder"]["inputs"])
    loaded = load_checkpoint(t5_base, torch.device("cpu"))
    ids = torch.tensor([[5, 9, 14, 30, 1], [7, 8, 22, 11, 1]])
    eos = loaded.info.eos_id
    with torch.no_grad():
        ours = generate(loaded.model, ids.tolist(), EvaluateConfig(max_new_tokens=8), eos_id=eos)
        theirs = _greedy_with_graphs(encoder, decoder, ids, eos)
    assert [g.token_ids for g in ours] == theirs


def test_denoising_pretraining_runs_through_the_cli(corpus, tmp_path):
    run = tmp_path / "bart"
    pretrain(
        run, corpus, *TINY_T5, "objective=denoising", "train.max_steps=10", "train.eval_every=5"
    )
    _, evals = metrics(run)
    assert [e["step"] for e in evals] == [5, 10]
    assert evals[1]["val_denoising_loss"] < evals[0]["val_denoising_loss"]
