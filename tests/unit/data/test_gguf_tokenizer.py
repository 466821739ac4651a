"""The tokenizer rebuilt from GGUF metadata: the ids transformers' GGUF tokenizer gives for the
same file, special tokens kept whole, llama.cpp's pre-tokenizer rules, clear refusals."""

import json

import pytest

from llmtune.data.gguf_tokenizer import tokenizer_from_gguf
from llmtune.data.tokenizer import train_tokenizer
from llmtune.errors import CheckpointError
from llmtune.models.llama_gguf import gguf_metadata, open_gguf

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

CORPUS = [
    "The quick brown fox jumps over the lazy dog, isn't it?",
    "Numbers 2004 and 3.14159 sit beside words like x1y2.",
    "Café naïve résumé — unicode text, with émojis 🙂 and tabs\tand\nnewlines.",
    "Indented code:\n    def f(x):\n        return x  # comment",
] * 10
TEXTS = [
    *CORPUS[:4],
    "<|im_start|>user\nhello there<|im_end|>\n<|im_start|>assistant\n",
    "a <think>why</think> b",
    "  two leading spaces, 'quotes' and CAPS SHOUTING!!",
]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="module")
def bpe():
    tok = train_tokenizer(CORPUS, "bpe", 400, 1, False)
    model = json.loads(tok.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    return tokens, merges


def write(tmp_path, bpe, pre="gpt-2", add_bos=False, model="gpt2"):
    tokens, merges = bpe
    tokens = [*tokens, *[t for t in SPECIALS if t not in tokens], "<think>"]
    types = [3 if t in SPECIALS else 4 if t == "<think>" else 1 for t in tokens]
    path = tmp_path / f"tok-{pre}-{add_bos}.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_tokenizer_model(model)
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<|im_start|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_pad_token_id(tokens.index("<|endoftext|>"))
    w.add_add_bos_token(add_bos)
    w.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize(
    ("pre", "add_bos"), [("gpt-2", False), ("llama-bpe", True), ("qwen2", False)]
)
def test_ids_equal_transformers_gguf_tokenizer(tmp_path, bpe, pre, add_bos):
    path = write(tmp_path, bpe, pre, add_bos)
    ours = tokenizer_from_gguf(gguf_metadata(open_gguf(path)))
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    for text in TEXTS:
        ids = ours.tokenizer.encode(text).ids
        assert ids == ref(text)["input_ids"], text
        assert ours.tokenizer.decode(ids, skip_special_tokens=True) == ref.decode(
            ids, skip_special_tokens=True
        )
    assert (ours.bos_token, ours.eos_token, ours.pad_token) == (
        ref.bos_token,
        ref.eos_token,
        ref.pad_token,
    )
    assert ours.add_bos_token == add_bos
    assert ours.chat_template == ref.chat_template


def test_special_and_user_defined_tokens_stay_whole(tmp_path, bpe):
    ours = tokenizer_from_gguf(gguf_metadata(open_gguf(write(tmp_path, bpe)))).tokenizer
    pieces = ours.encode("x<|im_end|>y<think>z").tokens
    assert "<|im_end|>" in pieces and "<think>" in pieces
    # control tokens vanish when decoding for people; user-defined ones are text
    assert ours.decode(ours.encode("a<|im_end|><think>").ids) == "a<think>"


def test_smollm_isolates_every_digit_before_splitting(tmp_path, bpe):
    """llama.cpp's "smollm" rule (and SmolLM's own tokenizer.json): digits are split off
    first, so the whitespace before a number stays one piece. transformers' GGUF loader
    ignores this rule and splits "  2004" as " ", " 2004" instead."""
    path = write(tmp_path, bpe, pre="smollm")
    ours = tokenizer_from_gguf(gguf_metadata(open_gguf(path))).tokenizer
    pieces = [p for p, _ in ours.pre_tokenizer.pre_tokenize_str("in  2004,\n\n 12")]
    assert pieces == ["in", "ĠĠ", "2", "0", "0", "4", ",", "ĊĊĠ", "1", "2"]


def test_default_rule_is_llama_cpps(tmp_path, bpe):
    """A file that names no rule ("default") splits as llama.cpp does for it: punctuation runs
    first, then GPT-2's split, then numbers in threes (transformers uses GPT-2's alone)."""
    path = write(tmp_path, bpe, pre="default")
    ours = tokenizer_from_gguf(gguf_metadata(open_gguf(path))).tokenizer
    pieces = [p for p, _ in ours.pre_tokenizer.pre_tokenize_str("isn't 12345")]
    assert pieces == ["isn", "'", "t", "Ġ", "123", "45"]


def test_unsupported_tokenizers_are_refused(tmp_path, bpe):
    meta = gguf_metadata(open_gguf(write(tmp_path, bpe, model="llama")))
    with pytest.raises(CheckpointError, match="tokenizer.ggml.model 'llama'"):
        tokenizer_from_gguf(meta)
    meta = gguf_metadata(open_gguf(write(tmp_path, bpe, pre="mystery")))
    with pytest.raises(CheckpointError, match="tokenizer.ggml.pre 'mystery'"):
        tokenizer_from_gguf(meta)
