"""GGUF export: a file written by llmtune loads in transformers with the same logits and token
ids, reads back into the same model, and refuses what llama.cpp would compute differently."""

import dataclasses

import pytest
import torch

from llmtune.data.gguf_tokenizer import gguf_tokenizer_metadata, tokenizer_from_gguf
from llmtune.data.pretrained_tokenizer import PretrainedTokenizer
from llmtune.data.tokenizer import train_tokenizer
from llmtune.errors import CheckpointError
from llmtune.models import to_hf_state_dict
from llmtune.models.llama_gguf import gguf_metadata, open_gguf
from llmtune.models.llama_gguf_write import write_llama_gguf
from llmtune.models.rope import RopeScaling
from tests.unit.data.test_gguf_tokenizer import CORPUS, TEXTS, bpe, write  # noqa: F401
from tests.unit.models.test_llama import TINY, build, perturb
from tests.unit.models.test_llama_gguf import read_ours

transformers = pytest.importorskip("transformers")
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
)


@pytest.fixture
def tokenizer(tmp_path, bpe) -> PretrainedTokenizer:  # noqa: F811
    tok = tokenizer_from_gguf(gguf_metadata(open_gguf(write(tmp_path, bpe, pre="smollm"))))
    return dataclasses.replace(tok, chat_template=CHATML)


def _export(tmp_path, config, tokenizer, dtype="f32"):
    model = build(config)
    perturb(model)
    path = tmp_path / "out" / "model.gguf"
    path.parent.mkdir(exist_ok=True)
    sd = to_hf_state_dict(model, include_tied=False)
    write_llama_gguf(path, sd, config, gguf_tokenizer_metadata(tokenizer), dtype)
    return model, path


CASES = {
    "llama": {},
    "qwen2-tied": {"attention_bias": True, "tie_embeddings": True},
    "llama3-rope": {"rope_scaling": RopeScaling("llama3", 8.0, 1.0, 4.0, 8192), "rope_theta": 5e5},
    "linear-rope": {"rope_scaling": RopeScaling("linear", 2.0)},
}


@pytest.mark.parametrize("case", CASES)
def test_transformers_reads_our_file_with_our_logits_and_ids(tmp_path, tokenizer, case):
    vocab = tokenizer.tokenizer.get_vocab_size()
    config = dataclasses.replace(TINY, vocab_size=vocab, **CASES[case])
    model, path = _export(tmp_path, config, tokenizer)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    ref_tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    x = torch.randint(0, vocab, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model.heads["lm"](model(x))
        # transformers' GGUF loader ignores rope scaling (llama.cpp reads it): unscaled only
        if config.rope_scaling.type == "none":
            torch.testing.assert_close(hf(x).logits, ours, atol=1e-5, rtol=1e-5)
        back = read_ours(path)  # and llmtune's own reader gives the model back
        torch.testing.assert_close(back.heads["lm"](back(x)), ours, atol=1e-5, rtol=1e-5)
    assert back.config.norm_eps == pytest.approx(config.norm_eps, rel=1e-6)  # stored as float32
    expected = dataclasses.replace(config, max_seq_len=config.n_positions)
    assert dataclasses.replace(back.config, norm_eps=config.norm_eps) == expected
    assert ref_tok.chat_template == CHATML and ref_tok.eos_token == "<|im_end|>"
    # text with digits is left out: transformers ignores the file's "smollm" digit rule
    for text in [t for t in TEXTS if not any(c.isdigit() for c in t)]:
        assert ref_tok(text)["input_ids"] == tokenizer.tokenizer.encode(text).ids


def test_f16_file_holds_the_rounded_weights(tmp_path, tokenizer):
    config = dataclasses.replace(TINY, vocab_size=tokenizer.tokenizer.get_vocab_size())
    model, path = _export(tmp_path, config, tokenizer, dtype="f16")
    back = read_ours(path)
    for key, ours in model.state_dict().items():
        expected = ours.half().float() if ours.dim() == 2 else ours
        assert torch.equal(back.state_dict()[key], expected), key
    reader = open_gguf(path)
    assert {t.tensor_type.name for t in reader.tensors} == {"F16", "F32"}


def test_tokenizer_metadata_round_trips(tmp_path, bpe):  # noqa: F811
    for pre in ("smollm", "llama-bpe", "qwen2", "default", "gpt-2"):
        meta = gguf_metadata(open_gguf(write(tmp_path, bpe, pre=pre)))
        again = gguf_tokenizer_metadata(tokenizer_from_gguf(meta))
        for key in ("pre", "tokens", "token_type", "merges", "bos_token_id", "eos_token_id"):
            assert again[f"tokenizer.ggml.{key}"] == meta[f"tokenizer.ggml.{key}"], (pre, key)
    trained = PretrainedTokenizer(train_tokenizer(CORPUS, "bpe", 300, 1, False))
    assert gguf_tokenizer_metadata(trained)["tokenizer.ggml.pre"] == "gpt-2"


def test_what_llama_cpp_would_compute_differently_is_refused(tmp_path, tokenizer):
    vocab = tokenizer.tokenizer.get_vocab_size()
    dynamic = dataclasses.replace(TINY, vocab_size=vocab, rope_scaling=RopeScaling("dynamic", 2.0))
    with pytest.raises(CheckpointError, match="no dynamic"):
        _export(tmp_path, dynamic, tokenizer)
    window = dataclasses.replace(TINY, vocab_size=vocab, sliding_window=16)
    with pytest.raises(CheckpointError, match="no sliding window"):
        _export(tmp_path, window, tokenizer)
    config = dataclasses.replace(TINY, vocab_size=vocab)
    sd = to_hf_state_dict(build(config), include_tied=False)
    sd["model.norm.weight"] = sd["model.norm.weight"]  # 1-D: stays F32, no range limit
    sd["lm_head.weight"] = sd["lm_head.weight"] * 1e6
    with pytest.raises(CheckpointError, match="lm_head.weight exceeds the F16 range"):
        write_llama_gguf(tmp_path / "big.gguf", sd, config, gguf_tokenizer_metadata(tokenizer))
