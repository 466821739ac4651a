"""A `tokenizers.Tokenizer` rebuilt from a GGUF file's metadata (byte-level BPE vocabulary and
merges, llama.cpp's pre-tokenizer, special tokens), plus the chat template and special-token
names the file carries. Ids equal those of the original Hugging Face tokenizer."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from llmtune.data.pretrained_tokenizer import PretrainedTokenizer
from llmtune.errors import CheckpointError

_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types
# llama.cpp's `tokenizer.ggml.pre` names -> the regexes it splits text with before BPE, one
# after the other (each splits the pieces of the previous; unmatched text stays a piece)
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_DEFAULT = (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]")
PRE_TOKENIZERS: dict[str, tuple[str, ...]] = {
    "default": _DEFAULT,  # what llama.cpp uses for a BPE file that names no rule
    **dict.fromkeys(("gpt-2", "mpt", "olmo", "jais"), (_GPT2,)),
    **dict.fromkeys(
        ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"),
        (r"\p{N}", _GPT2),
    ),
    **dict.fromkeys(
        ("llama-bpe", "llama3", "llama-v3", "falcon3", "smaug-bpe", "dbrx"), (_LLAMA3,)
    ),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "stablelm2"), (_QWEN2,)),
}


def _byte_alphabet() -> dict[int, str]:
    # bytes that print as themselves keep their character; the other 68 get 256, 257, ...
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    extra = iter(range(256, 512))
    return {b: chr(b) if b in keep else chr(next(extra)) for b in range(256)}


def _spelled(token: str, alphabet: set[str], spelling: dict[int, str]) -> str:
    """A token as the byte-level vocabulary spells it (GGUF files sometimes store raw text)."""
    if set(token) <= alphabet:
        return token
    return "".join(spelling[b] for b in token.encode("utf-8"))


def _pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
    if pre not in PRE_TOKENIZERS:
        raise CheckpointError(
            f"GGUF tokenizer.ggml.pre '{pre}' is not supported "
            f"(supported: {', '.join(sorted(PRE_TOKENIZERS))})"
        )
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in PRE_TOKENIZERS[pre]]
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    return pre_tokenizers.Sequence([*splits, byte_level])


def tokenizer_from_gguf(meta: Mapping[str, Any]) -> PretrainedTokenizer:
    """Rebuild the tokenizer described by GGUF metadata (`tokenizer.ggml.*` keys)."""
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise CheckpointError(
            f"GGUF tokenizer.ggml.model '{kind}' is not supported (byte-level BPE 'gpt2' only)"
        )
    tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
    types: list[int] = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    spelling = _byte_alphabet()
    alphabet = set(spelling.values())
    vocab = {_spelled(t, alphabet, spelling): i for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ")) for m in meta.get("tokenizer.ggml.merges", [])]
    if any(len(m) != 2 for m in merges):
        raise CheckpointError("GGUF tokenizer.ggml.merges holds a merge that is not a pair")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tok.pre_tokenizer = _pre_tokenizer(meta.get("tokenizer.ggml.pre", "default"))
    tok.decoder = decoders.ByteLevel()
    # control tokens stay whole and are skipped when decoding; a "control" token spelled
    # outside the byte alphabet is a llama.cpp mislabel and would grow the vocabulary
    specials = [
        AddedToken(t, special=True, normalized=False)
        for t, kind_id in zip(tokens, types, strict=True)
        if kind_id == _CONTROL and set(t) <= alphabet
    ]
    tok.add_special_tokens(specials)
    tok.add_tokens(
        [
            AddedToken(t, special=False, normalized=False)
            for t, kind_id in zip(tokens, types, strict=True)
            if kind_id == _USER_DEFINED and t in vocab
        ]
    )

    def named(key: str) -> str | None:
        index = meta.get(f"tokenizer.ggml.{key}")
        return tokens[int(index)] if index is not None and int(index) < len(tokens) else None

    bos, eos = named("bos_token_id"), named("eos_token_id")
    add_bos = bos is not None and bool(meta.get("tokenizer.ggml.add_bos_token", False))
    add_eos = eos is not None and bool(meta.get("tokenizer.ggml.add_eos_token", False))
    if add_bos or add_eos:
        first, last = bos if add_bos else None, eos if add_eos else None
        tok.post_processor = _bos_eos_template(tok, first, last)
    return PretrainedTokenizer(
        tokenizer=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token=named("padding_token_id"),
        chat_template=str(meta.get("tokenizer.chat_template", "")),
        add_bos_token=add_bos,
    )


def _bos_eos_template(tok: Tokenizer, bos: str | None, eos: str | None) -> processors.PostProcessor:
    """Put bos before and/or eos after every encoded text, as llama.cpp does for this file."""
    first, last = [bos] if bos else [], [eos] if eos else []
    single = " ".join([*first, "$A", *last])
    pair = " ".join([*first, "$A", *last, *first, "$B:1", *last])
    ids = [(t, tok.token_to_id(t)) for t in dict.fromkeys([*first, *last])]
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=ids)


def _pre_name(pre: dict | None) -> str:
    """llama.cpp's name for a tokenizer.json pre-tokenizer: the split sequence of one of the
    rules above (a GGUF import), or GPT-2's own (llmtune's BPE) with or without digits first
    (SmolLM's tokenizer.json)."""
    steps = (pre or {}).get("pretokenizers", [pre] if pre else [])
    kinds = [step.get("type") for step in steps]
    if kinds[-1:] == ["ByteLevel"] and steps[-1].get("use_regex", True):
        if kinds == ["ByteLevel"]:
            return "gpt-2"
        if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
            return "smollm"
    if kinds and set(kinds[:-1]) == {"Split"} and kinds[-1] == "ByteLevel":
        rule = tuple(step.get("pattern", {}).get("Regex") for step in steps[:-1])
        for name, regexes in PRE_TOKENIZERS.items():  # the first name is llama.cpp's own
            if regexes == rule:
                return name
    raise CheckpointError(
        f"format=gguf: llama.cpp has no pre-tokenizer matching this tokenizer's ({kinds})"
    )


def gguf_tokenizer_metadata(pretrained: PretrainedTokenizer) -> dict[str, Any]:
    """The `tokenizer.*` GGUF keys describing a byte-level BPE tokenizer (the inverse of
    `tokenizer_from_gguf`), for writing a GGUF file."""
    spec = json.loads(pretrained.tokenizer.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE" or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise CheckpointError("format=gguf: only byte-level BPE tokenizers can be written")
    by_id = {i: t for t, i in model["vocab"].items()}
    types = dict.fromkeys(by_id, 1)
    for added in spec.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
        types[added["id"]] = _CONTROL if added.get("special") else _USER_DEFINED
    if sorted(by_id) != list(range(len(by_id))):
        raise CheckpointError("format=gguf: the tokenizer's ids have gaps")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    ids = {role: pretrained.token_id(f"{role}_token") for role in ("bos", "eos", "pad")}
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": _pre_name(spec.get("pre_tokenizer")),
        "tokenizer.ggml.tokens": [by_id[i] for i in range(len(by_id))],
        "tokenizer.ggml.token_type": [types[i] for i in range(len(by_id))],
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": ids["bos"],
        "tokenizer.ggml.eos_token_id": ids["eos"],
        "tokenizer.ggml.padding_token_id": ids["pad"],
        "tokenizer.ggml.add_bos_token": pretrained.add_bos_token,
        "tokenizer.chat_template": pretrained.chat_template,
    }
