"""Chat templates: rendered ids equal transformers' apply_chat_template; a template cannot
escape the sandbox; bad conversations are one-line errors."""

import pytest

from llmtune.data.chat import assistant_spans, in_spans, render_chat
from llmtune.data.gguf_tokenizer import tokenizer_from_gguf
from llmtune.errors import DataError
from llmtune.models.llama_gguf import gguf_metadata, open_gguf
from tests.unit.data.test_gguf_tokenizer import bpe, write  # noqa: F401 (bpe is a fixture)

transformers = pytest.importorskip("transformers")

# SmolLM2-Instruct's ChatML template (a default system turn when none is given)
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Name a fox."},
        {"role": "assistant", "content": "The quick brown fox."},
        {"role": "user", "content": "And a dog?"},
    ],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_ids_equal_transformers_apply_chat_template(tmp_path, bpe, messages, add_generation_prompt):  # noqa: F811
    path = write(tmp_path, bpe)
    ours = tokenizer_from_gguf(gguf_metadata(open_gguf(path)))
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    specials = {"bos_token": ours.bos_token, "eos_token": ours.eos_token}
    text = render_chat(CHATML, messages, add_generation_prompt, specials)
    theirs = ref.apply_chat_template(
        messages, chat_template=CHATML, add_generation_prompt=add_generation_prompt
    )
    theirs = theirs["input_ids"] if hasattr(theirs, "keys") else theirs
    assert ours.tokenizer.encode(text).ids == list(theirs)


def test_template_cannot_reach_python_objects():
    hostile = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(DataError, match="chat template refused"):
        render_chat(hostile, CONVERSATIONS[0])


def test_bad_conversations_are_one_line_errors():
    strict = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}"
    with pytest.raises(DataError, match="refused the conversation: user first"):
        render_chat(strict, [{"role": "assistant", "content": "hi"}])
    with pytest.raises(DataError, match="message 0 must be an object with 'role' and 'content'"):
        render_chat(CHATML, [{"text": "hi"}])
    with pytest.raises(DataError, match="no chat template"):
        render_chat("", CONVERSATIONS[0])


def test_assistant_spans_cover_exactly_the_assistant_turns(tmp_path, bpe):  # noqa: F811
    tok = tokenizer_from_gguf(gguf_metadata(open_gguf(write(tmp_path, bpe)))).tokenizer
    messages = [*CONVERSATIONS[1], {"role": "assistant", "content": "A lazy dog."}]
    text, spans = assistant_spans(CHATML, messages)
    assert [text[a:b] for a, b in spans] == [
        "The quick brown fox.<|im_end|>\n",
        "A lazy dog.<|im_end|>\n",
    ]
    encoding = tok.encode(text)
    trained = in_spans(encoding.offsets, spans)
    kept = [i for i, t in zip(encoding.ids, trained, strict=True) if t]
    assert (
        tok.decode(kept, skip_special_tokens=False)
        == "The quick brown fox.<|im_end|>\nA lazy dog.<|im_end|>\n"
    )


def test_assistant_spans_refuse_a_template_that_rewrites_turns():
    last_only = "{{ messages[-1]['content'] }}{% if add_generation_prompt %}>{% endif %}"
    with pytest.raises(DataError, match="renders turn 1 differently"):
        assistant_spans(last_only, CONVERSATIONS[1][1:3])
