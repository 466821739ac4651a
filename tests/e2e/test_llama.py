"""The Llama family end to end through the real CLI, in-process: a tiny chat model (GQA, tied,
a ChatML template) as a Hugging Face folder and as a GGUF file; pretraining, fine-tuning with
every method and decoder objective, evaluation, generation through the chat template, export.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from llmtune.cli import main
from llmtune.data.gguf_tokenizer import gguf_tokenizer_metadata
from llmtune.data.pretrained_tokenizer import PretrainedTokenizer
from llmtune.data.tokenizer import train_tokenizer
from llmtune.loading import load_checkpoint, read_base
from llmtune.models import build_model, hf_config_dict, to_hf_state_dict
from llmtune.models.llama import LlamaConfig
from llmtune.models.llama_gguf_write import write_llama_gguf
from tests.e2e.helpers import TINY_LLAMA, evaluate, metrics, pretrain, read_jsonl
from tests.e2e.test_finetune import WORDS, _write, finetune

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nBe brief.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))) for _ in range(n)]


def conversations(n: int, seed: int) -> list[dict]:
    """Multi-turn chats whose every assistant turn is 'ok': learnt in a few dozen steps."""
    rng = random.Random(seed)
    rows = []
    for question in _sentences(n, seed):
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": "ok"}]
        if rng.random() < 0.5:
            messages = [{"role": "system", "content": "You answer."}, *messages]
            messages += [
                {"role": "user", "content": "and?"},
                {"role": "assistant", "content": "ok"},
            ]
        rows.append({"messages": messages})
    return rows


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory) -> dict[str, Path]:
    """A tiny Llama chat model as an HF folder (config, weights, tokenizer, template) and as
    the same weights and tokenizer in an F32 GGUF file."""
    root = tmp_path_factory.mktemp("chat_model")
    tok = train_tokenizer(
        _sentences(300, 0) + ["ok and? Be brief. You answer."], "bpe", 300, 1, False
    )
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    pretrained = PretrainedTokenizer(tok, "<|im_start|>", "<|im_end|>", None, CHATML)
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(), d_model=64, n_heads=4, n_kv_heads=2, d_ff=128,
        max_seq_len=64, n_positions=256, tie_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(config, ("lm",))
    folder = root / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(hf_config_dict(config)))
    save_file(to_hf_state_dict(model, include_tied=False), folder / "model.safetensors")
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(pretrained.to_config()))
    gguf = root / "tiny.gguf"
    sd = to_hf_state_dict(model, include_tied=False)
    write_llama_gguf(gguf, sd, config, gguf_tokenizer_metadata(pretrained), "f32")
    return {"hf": folder, "gguf": gguf}


@pytest.fixture(scope="module")
def chats(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("chats")
    return (
        _write(folder / "train.jsonl", conversations(96, 1)),
        _write(folder / "val.jsonl", conversations(16, 2)),
    )


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory, chat_model, chats) -> Path:
    """SFT on conversations from the HF folder: the assistant learns to say 'ok'."""
    run = tmp_path_factory.mktemp("sft") / "run"
    finetune(
        run,
        f"hf:{chat_model['hf']}",
        "objective=sft",
        "data=files",
        f"data.train={chats[0]}",
        f"data.validation={chats[1]}",
        "data.messages_column=messages",
        "train.max_steps=40",
        "train.eval_every=20",
        "train.save_every=40",
        "optim.lr=5e-3",
    )
    return run


def test_pretrain_llama_tiny_lowers_the_loss(tmp_path, jsonl_corpus):
    run = tmp_path / "run"
    pretrain(run, jsonl_corpus, *TINY_LLAMA, "train.max_steps=12", "train.eval_every=12")
    train, evals = metrics(run)
    assert train[-1]["loss"] < train[0]["loss"] - 0.5 and evals
    loaded = load_checkpoint(run)
    assert loaded.family == "llama" and loaded.model.config.kv_heads == 2
    assert loaded.meta["objective"] == "clm"


def test_sft_on_messages_learns_assistant_turns_and_keeps_the_template(chat_run, chat_model):
    train, evals = metrics(chat_run)
    assert evals[-1]["val_loss"] < 0.5 * train[0]["loss"], (train[0], evals)
    tokenizer = load_checkpoint(chat_run).config.tokenizer
    assert tokenizer.chat_template == CHATML
    assert (tokenizer.bos_token, tokenizer.eos_token) == (
        "<|im_start|>",
        "<|im_end|>",
    )


def test_evaluate_prompts_go_through_the_template_and_stop_at_end_of_turn(tmp_path, chat_run):
    results = evaluate(tmp_path / "eval", f"ckpt={chat_run}", "prompts=[the film is long]")
    [row] = read_jsonl(tmp_path / "eval" / results["generations_file"])
    # the model learnt '<|im_start|>assistant\n' -> 'ok<|im_end|>': stopped there, not at 64
    assert row["completion"].strip() == "ok" and row["stop"] == "eos", row


@pytest.mark.parametrize("source", ["hf", "gguf"])
def test_evaluate_and_export_read_a_downloaded_model(tmp_path, chat_model, chats, source):
    ckpt = f"{source}:{chat_model[source]}"
    test = _write(tmp_path / "test.jsonl", [{"text": s} for s in _sentences(8, 5)])
    results = evaluate(tmp_path / "eval", f"ckpt={ckpt}", "data=files", f"data.test={test}")
    assert results["family"] == "llama" and results["perplexity"] > 1
    out = tmp_path / "export"
    main(["export", f"hydra.run.dir={tmp_path / 'x'}", f"ckpt={ckpt}", "format=hf", f"out={out}"])
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == CHATML and tok.eos_token == "<|im_end|>"
    hf = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert type(hf).__name__ == "LlamaForCausalLM"


def test_chat_ids_equal_transformers_apply_chat_template(chat_model):
    """sft's token ids are transformers' apply_chat_template's; only assistant turns (their
    closing markup included) are targets."""
    transformers = pytest.importorskip("transformers")
    from llmtune.config.schema import FilesData
    from llmtune.data import tokenizer_info
    from llmtune.objectives.sft import DEFAULT_TEMPLATE, InstructionTuning

    base = read_base(f"hf:{chat_model['hf']}")
    data = FilesData(messages_column="messages")
    info = tokenizer_info(base.tokenizer, "bpe")
    task = InstructionTuning(info, base.tokenizer, data, DEFAULT_TEMPLATE, base.tokenizer_config)
    rows = conversations(6, 3)
    import datasets

    encoded = task.encode(datasets.Dataset.from_list(rows), 512)
    reference = transformers.AutoTokenizer.from_pretrained(chat_model["hf"])
    for row, ids, labels in zip(rows, encoded.rows["input_ids"], encoded.rows["labels"]):
        expected = reference.apply_chat_template(row["messages"], tokenize=True, return_dict=True)
        expected = list(expected["input_ids"])
        assert ids == expected
        learnt = base.tokenizer.decode([t for t in labels if t != -100], skip_special_tokens=False)
        n_turns = sum(m["role"] == "assistant" for m in row["messages"])
        assert learnt == "ok<|im_end|>\n" * n_turns


def test_preference_pairs_and_ppo_prompts_equal_transformers_apply_chat_template(chat_model):
    """dpo and reward rows of a chat model are sft's layout: [user prompt, assistant response]
    as apply_chat_template gives it, the assistant turn (closing markup included) the target;
    ppo's prompts are the user turn with the assistant opening (add_generation_prompt)."""
    transformers = pytest.importorskip("transformers")
    from types import SimpleNamespace

    import datasets

    from llmtune.config.schema import FilesData, RunConfig
    from llmtune.data import tokenizer_info
    from llmtune.models.family import Kind
    from llmtune.objectives import Context, entry

    base = read_base(f"hf:{chat_model['hf']}")
    info = tokenizer_info(base.tokenizer, "bpe")
    reference = transformers.AutoTokenizer.from_pretrained(chat_model["hf"])
    pairs = _pairs(4, 7)

    def layout(prompt: str, response: str) -> list[int]:
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        return list(
            reference.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        )

    def context(name: str, **objective) -> Context:
        config = RunConfig(
            objective=entry(name).config(**objective),
            data=FilesData(),
            tokenizer=base.tokenizer_config,
        )
        reward = SimpleNamespace(
            model=build_model(LlamaConfig(vocab_size=info.vocab_size, d_model=32, n_heads=2,
                                          d_ff=64, n_layers=1), ("reward",)),
            tokenizer=base.tokenizer,
            meta={"objective": "reward"},
        )  # fmt: skip
        return Context(config, base.tokenizer, info, Kind.DECODER, load_checkpoint=lambda p: reward)

    for name in ("dpo", "reward"):
        task = entry(name).make(context(name), [])
        encoded = task.encode(datasets.Dataset.from_list(pairs), 512).rows
        for i, row in enumerate(pairs):
            for prefix, column in (("", "chosen"), ("rejected_", "rejected")):
                assert encoded[prefix + "input_ids"][i] == layout(row["prompt"], row[column])
                labels = [t for t in encoded[prefix + "labels"][i] if t != -100]
                learnt = base.tokenizer.decode(labels, skip_special_tokens=False)
                assert learnt == row[column] + "<|im_end|>\n", (name, learnt)
    ppo = entry("ppo").make(context("ppo", reward_model="r", max_new_tokens=8), [])
    prompts = ppo.encode(
        datasets.Dataset.from_list([{"instruction": p["prompt"]} for p in pairs]), 64
    )
    for row, ids in zip(pairs, prompts.rows["input_ids"]):
        messages = [{"role": "user", "content": row["prompt"]}]
        expected = reference.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        assert ids == list(expected["input_ids"])


METHODS = {
    "full": [],
    "freeze": ["method=freeze", "method.freeze_layers=1"],
    "lora": ["method=lora", "method.targets=[qkv,proj,fc]"],
    "prefix": ["method=prefix", "method.n_tokens=4", "optim.lr=2e-2"],
    "prompt": ["method=prompt", "method.n_tokens=4", "optim.lr=2e-2"],
}


@pytest.mark.parametrize("method", METHODS)
def test_every_method_fine_tunes_the_gguf_model(tmp_path, chat_model, chats, method):
    run = tmp_path / "run"
    finetune(
        run,
        f"gguf:{chat_model['gguf']}",
        "objective=sft",
        "data=files",
        f"data.train={chats[0]}",
        f"data.validation={chats[1]}",
        "data.messages_column=messages",
        "train.max_steps=6",
        "train.eval_every=6",
        "train.save_every=6",
        "train.log_every=1",
        *METHODS[method],
    )
    train, evals = metrics(run)
    assert train[-1]["loss"] < train[0]["loss"] and evals, train
    loaded = load_checkpoint(run)  # adapters reload onto the GGUF base
    assert loaded.meta["method"] == method
    assert loaded.config.tokenizer.chat_template == CHATML
    if method in ("lora", "prefix", "prompt"):
        assert loaded.meta["base"]["path"].startswith("gguf:")


def _pairs(n: int, seed: int) -> list[dict]:
    return [
        {"prompt": s, "chosen": "the film is great", "rejected": "the film is awful"}
        for s in _sentences(n, seed)
    ]


def _labelled(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for s in _sentences(n, seed):
        good = rng.random() < 0.5
        cue = "great" if good else "awful"
        rows.append({"text": f"{s} {cue}", "label": int(good), "positive": f"{cue} {s}"})
    return rows


OBJECTIVES = {
    "dpo": (_pairs, ["model.dropout=0", "model.attn_dropout=0"]),
    "reward": (_pairs, []),
    "seq_cls": (_labelled, []),
    "contrastive": (_labelled, ["objective.pooling=mean", "data.text_pair_column=positive"]),
}


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_decoder_objectives_train_on_llama(tmp_path, chat_model, objective):
    rows, extra = OBJECTIVES[objective]
    train = _write(tmp_path / "train.jsonl", rows(48, 1))
    val = _write(tmp_path / "val.jsonl", rows(16, 2))
    run = tmp_path / "run"
    finetune(
        run,
        f"hf:{chat_model['hf']}",
        f"objective={objective}",
        "data=files",
        f"data.train={train}",
        f"data.validation={val}",
        "train.max_steps=6",
        "train.eval_every=6",
        "train.save_every=6",
        *extra,
    )
    train_rows, evals = metrics(run)
    assert evals and all(r["loss"] == r["loss"] for r in train_rows)  # finite, not NaN
    loaded = load_checkpoint(run)
    assert loaded.meta["objective"] == objective and loaded.family == "llama"


def test_pretraining_keys_of_another_family_are_refused(tmp_path, jsonl_corpus, capsys):
    with pytest.raises(SystemExit) as exc:
        pretrain(tmp_path / "r", jsonl_corpus, *TINY_LLAMA, "model.layer_norm_eps=1e-5")
    assert exc.value.code == 2
    assert "is a key of model.family=bert/gpt" in capsys.readouterr().err


def test_chat_repl_keeps_the_conversation_and_streams(chat_run, tmp_path, monkeypatch, capsys):
    import io

    from llmtune.commands import chat

    turns = []
    original = chat.Session.answer

    def spy(session, text):
        turns.append(list(session.messages))  # the history the new turn is answered with
        return original(session, text)

    monkeypatch.setattr(chat.Session, "answer", spy)
    streamed = []
    real_generate = chat.generate
    monkeypatch.setattr(
        chat,
        "generate",
        lambda *a: real_generate(*a[:-1], lambda i, t: (streamed.append(t), a[-1](i, t))),
    )
    monkeypatch.setattr("sys.stdin", io.StringIO("the film is long\nand?\n/reset\nthe city\n"))
    main(["chat", f"hydra.run.dir={tmp_path / 'chat'}", f"ckpt={chat_run}", "hardware=cpu"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[-3:] == ["ok", "ok", "ok"], lines
    assert [len(t) for t in turns] == [0, 2, 0]  # the second turn sees the first; /reset forgets
    assert turns[1][1] == {"role": "assistant", "content": "ok"}
    assert len(streamed) >= 6  # 'ok' and the end of turn, token by token, three times


def test_chat_refuses_a_model_without_a_template(tmp_path, jsonl_corpus, capsys):
    run = tmp_path / "run"
    pretrain(run, jsonl_corpus, *TINY_LLAMA, "train.max_steps=2", "train.eval_every=2")
    with pytest.raises(SystemExit) as exc:
        main(["chat", f"hydra.run.dir={tmp_path / 'chat'}", f"ckpt={run}", "hardware=cpu"])
    assert exc.value.code == 2 and "has no chat template" in capsys.readouterr().err


@pytest.mark.parametrize("gguf_type", ["f16", "f32"])
def test_gguf_export_round_trips_the_fine_tuned_chat_model(tmp_path, chat_run, gguf_type):
    out = tmp_path / "gguf"
    main(
        [
            "export",
            f"hydra.run.dir={tmp_path / 'x'}",
            f"ckpt={chat_run}",
            "format=gguf",
            f"out={out}",
            f"export.gguf_type={gguf_type}",
        ]
    )
    results = evaluate(tmp_path / "eval", f"ckpt=gguf:{out / 'model.gguf'}", "prompts=[the city]")
    [row] = read_jsonl(tmp_path / "eval" / results["generations_file"])
    assert row["completion"].strip() == "ok" and row["stop"] == "eos", row  # template kept
    if gguf_type == "f32":
        transformers = pytest.importorskip("transformers")
        tok = transformers.AutoTokenizer.from_pretrained(out, gguf_file="model.gguf")
        assert tok.chat_template == CHATML and tok.eos_token == "<|im_end|>"


def test_gguf_export_refuses_another_family(tmp_path, jsonl_corpus, capsys):
    from tests.e2e.helpers import TINY_GPT

    run = tmp_path / "run"
    pretrain(run, jsonl_corpus, *TINY_GPT, "train.max_steps=2", "train.eval_every=2")
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "export",
                f"hydra.run.dir={tmp_path / 'x'}",
                f"ckpt={run}",
                "format=gguf",
                f"out={tmp_path / 'o'}",
            ]
        )
    assert exc.value.code == 2 and "Llama-family" in capsys.readouterr().err


def test_finetune_from_an_hf_export_equals_finetune_from_the_checkpoint(tmp_path, jsonl_corpus):
    """Export hf -> init_from=hf:<export> trains step for step as init_from=<checkpoint>."""
    run = tmp_path / "run"
    pretrain(run, jsonl_corpus, *TINY_LLAMA, "train.max_steps=4", "train.eval_every=4")
    out = tmp_path / "hf"
    main(["export", f"hydra.run.dir={tmp_path / 'x'}", f"ckpt={run}", "format=hf", f"out={out}"])
    losses = []
    for source in (str(run), f"hf:{out}"):
        ft = tmp_path / f"ft-{len(losses)}"
        finetune(
            ft,
            source,
            "objective=clm",
            "data=files",
            f"data.train={jsonl_corpus}",
            "model.max_seq_len=32",
            "train.max_steps=4",
            "train.log_every=1",
        )
        losses.append([r["loss"] for r in metrics(ft)[0]])
    assert len(losses[0]) == 4 and losses[0] == losses[1], losses
