"""Tokenizers of Hugging Face folders with their chat settings: read what transformers saves,
and write a tokenizer_config.json transformers reads back with the same chat ids."""

import json

import pytest

from llmtune.data.chat import render_chat
from llmtune.data.gguf_tokenizer import tokenizer_from_gguf
from llmtune.data.pretrained_tokenizer import PretrainedTokenizer, read_hf_tokenizer
from llmtune.errors import CheckpointError
from llmtune.models.llama_gguf import gguf_metadata, open_gguf
from tests.unit.data.test_chat import CHATML, CONVERSATIONS
from tests.unit.data.test_gguf_tokenizer import bpe, write  # noqa: F401 (bpe is a fixture)

transformers = pytest.importorskip("transformers")


@pytest.fixture
def ours(tmp_path, bpe) -> PretrainedTokenizer:  # noqa: F811
    gguf_tok = tokenizer_from_gguf(gguf_metadata(open_gguf(write(tmp_path, bpe))))
    return PretrainedTokenizer(
        gguf_tok.tokenizer, gguf_tok.bos_token, gguf_tok.eos_token, gguf_tok.pad_token, CHATML
    )


def _save(tok: PretrainedTokenizer, folder):
    folder.mkdir()
    tok.tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(tok.to_config()))
    return folder


def test_written_folder_gives_transformers_the_same_chat_ids(tmp_path, ours):
    folder = _save(ours, tmp_path / "out")
    ref = transformers.AutoTokenizer.from_pretrained(folder)
    assert (ref.bos_token, ref.eos_token, ref.pad_token) == (
        ours.bos_token,
        ours.eos_token,
        ours.pad_token,
    )
    for messages in CONVERSATIONS:
        text = render_chat(CHATML, messages, True, ours.special_tokens())
        theirs = ref.apply_chat_template(messages, add_generation_prompt=True)
        theirs = theirs["input_ids"] if hasattr(theirs, "keys") else theirs
        assert ours.tokenizer.encode(text).ids == list(theirs)


def test_reads_what_transformers_saves(tmp_path, ours):
    ref = transformers.AutoTokenizer.from_pretrained(_save(ours, tmp_path / "a"))
    ref.save_pretrained(tmp_path / "b")  # may move the template to chat_template.jinja
    back = read_hf_tokenizer(tmp_path / "b")
    assert back.special_tokens() == ours.special_tokens()
    assert back.chat_template == CHATML
    assert (
        back.tokenizer.encode("a <|im_end|> b").ids == ours.tokenizer.encode("a <|im_end|> b").ids
    )
    assert back.token_id("eos_token") == ours.tokenizer.token_to_id("<|im_end|>")


def test_older_layouts_and_refusals(tmp_path, ours):
    folder = _save(ours, tmp_path / "old")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = [
        {"name": "tool_use", "template": "x"},
        {"name": "default", "template": CHATML},
    ]
    config["eos_token"] = {"content": "<|im_end|>", "special": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    back = read_hf_tokenizer(folder)
    assert (back.chat_template, back.eos_token) == (CHATML, "<|im_end|>")
    config["pad_token"] = "<nope>"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="pad_token '<nope>' is not in the vocabulary"):
        read_hf_tokenizer(folder)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        read_hf_tokenizer(folder)
