"""`format=gguf`: a llama.cpp GGUF file (F16 or F32, `export.gguf_type`) of a Llama-family
checkpoint with its tokenizer and chat template, read back with llmtune's own GGUF reader and
compared logit for logit with the model (its matrices rounded to F16 for an F16 file)."""

from __future__ import annotations

import copy

import torch

from llmtune.data.gguf_tokenizer import gguf_tokenizer_metadata
from llmtune.data.pretrained_tokenizer import PretrainedTokenizer
from llmtune.errors import ConfigError
from llmtune.export.job import ExportJob
from llmtune.export.verify import check, max_abs_diff
from llmtune.foreign import GGUF_PREFIX, SOURCES
from llmtune.models import build_model, to_hf_state_dict
from llmtune.models.llama_gguf_write import write_llama_gguf

FILE = "model.gguf"


def _tokenizer(job: ExportJob) -> PretrainedTokenizer:
    """The checkpoint's tokenizer with its chat names; eos falls back to the family's EOS."""
    chat, info = job.loaded.config.tokenizer, job.loaded.info
    eos = chat.eos_token or (
        None if info.eos_id is None else job.loaded.tokenizer.id_to_token(info.eos_id)
    )
    return PretrainedTokenizer(
        job.loaded.tokenizer,
        bos_token=chat.bos_token or None,
        eos_token=eos,
        chat_template=chat.chat_template,
    )


def _as_stored(model: torch.nn.Module, dtype: str) -> torch.nn.Module:
    """The model as the file holds it: matrices rounded to F16 for an F16 file."""
    if dtype == "f32":
        return model
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for p in rounded.parameters():
            if p.dim() == 2:
                p.copy_(p.half().float())
    return rounded


@torch.no_grad()
def write(job: ExportJob) -> list[str]:
    """Write <out>/model.gguf and verify it; returns the report lines."""
    model, dtype = job.loaded.model, job.config.export.gguf_type
    if job.loaded.family != "llama" or tuple(model.heads) != ("lm",):
        raise ConfigError(
            f"format=gguf: llama.cpp runs Llama-family language models; {job.loaded.step_dir} "
            f"is a {job.loaded.family} model with heads {list(model.heads)}"
        )
    if job.loaded.meta.get("method") in ("prefix", "prompt"):
        raise ConfigError("format=gguf: a prefix or soft prompt has no place in a GGUF file")
    path = job.out / FILE
    sd = to_hf_state_dict(model, include_tied=False)
    write_llama_gguf(path, sd, model.config, gguf_tokenizer_metadata(_tokenizer(job)), dtype)
    back = SOURCES[GGUF_PREFIX](path)
    read = build_model(back.model_config, ("lm",))
    read.load_state_dict(back.weights, strict=False)
    ids, mask = job.sample["input_ids"], job.sample["attention_mask"]
    stored = _as_stored(model, dtype).eval()
    expected = (stored.heads["lm"](stored(ids)),)
    got = (read.eval().heads["lm"](read(ids)),)
    line = check(
        max_abs_diff(expected, got, ("lm",), mask),
        job.config.export.atol,
        f"{FILE} read back",
        job.sample,
    )
    size = path.stat().st_size / 2**20
    return [f"wrote {path.name} ({dtype.upper()}, {size:.1f} MiB; run it with llama.cpp)", line]
