"""`format=hf`: a Hugging Face folder (config.json, model.safetensors, tokenizer files) written
through the one key map in models/convert.py, then loaded back with transformers' Auto classes
and compared logit for logit."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from llmtune.config.schema import EvaluateConfig
from llmtune.errors import ConfigError
from llmtune.export.inference import SAMPLE_TEXTS
from llmtune.export.job import ExportJob, external, require
from llmtune.export.verify import VerificationError, verify
from llmtune.models import hf_config_dict, to_hf_state_dict
from llmtune.models.convert import hf_class_name
from llmtune.models.family import Kind
from llmtune.models.generation import generate
from llmtune.models.pooling import pool_hidden

# The transformers Auto class that builds each head set's HF class (see convert.ARCHS).
AUTO_CLASSES = {
    ("lm",): "AutoModelForCausalLM",
    ("mlm",): "AutoModelForMaskedLM",
    ("mlm", "nsp"): "AutoModelForPreTraining",
    ("nsp",): "AutoModelForNextSentencePrediction",
    ("seq_cls",): "AutoModelForSequenceClassification",
    ("token_cls",): "AutoModelForTokenClassification",
    (): "AutoModel",  # a contrastive sentence encoder: the backbone, pooled as configured
}
NO_HF_EQUIVALENT = ("prefix", "prompt")
GENERATION_CHECK_TOKENS = 12  # an encoder-decoder export also generates this many, both ways


def _config_json(job: ExportJob) -> dict:
    model, info = job.loaded.model, job.loaded.info
    labels = job.labels
    body = hf_config_dict(model.config, tuple(model.heads), len(labels))
    if labels:  # class names, so pipelines print them instead of LABEL_i
        body["id2label"] = {str(i): name for i, name in enumerate(labels)}
        body["label2id"] = {name: i for i, name in enumerate(labels)}
    if info.eos_id is not None:  # a byte-level BPE's one special token begins and ends text
        body |= {"bos_token_id": info.eos_id, "eos_token_id": info.eos_id}
    chat, token_id = job.loaded.config.tokenizer, job.loaded.tokenizer.token_to_id
    for role in ("bos", "eos"):  # a chat model's own: generation stops at its end of turn
        name = getattr(chat, f"{role}_token")
        if name and token_id(name) is not None:
            body[f"{role}_token_id"] = token_id(name)
    # GPT-2 has no pad token: llmtune pads with EOS, which HF's classifier must know
    body["pad_token_id"] = info.pad_id
    return body


def _special_tokens(job: ExportJob) -> dict[str, str]:
    """The tokenizer's special tokens by HF role; a tokenizer without an unknown token (byte-level
    BPE) names its EOS there, as GPT-2's does."""
    info, name = job.loaded.info, job.loaded.tokenizer.id_to_token
    unk = info.unk_id if info.unk_id is not None else info.eos_id
    ids = {"bos": info.eos_id, "eos": info.eos_id, "unk": unk, "pad": info.pad_id}
    ids |= {"cls": info.cls_id, "sep": info.sep_id, "mask": info.mask_id}
    out = {f"{k}_token": name(v) for k, v in ids.items() if v is not None}
    chat = job.loaded.config.tokenizer
    return out | {
        k: v for k, v in (("bos_token", chat.bos_token), ("eos_token", chat.eos_token)) if v
    }


def _write_tokenizer(job: ExportJob, out: Path) -> None:
    specials = _special_tokens(job)
    job.loaded.tokenizer.save(str(out / "tokenizer.json"))
    # PreTrainedTokenizerFast reads tokenizer.json as is, in transformers 4 and 5 alike
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": job.loaded.config.model.max_seq_len,
        "padding_side": "right",
        **specials,
    }
    if job.loaded.config.tokenizer.chat_template:  # transformers' apply_chat_template reads it
        config["chat_template"] = job.loaded.config.tokenizer.chat_template
    names = job.loaded.model.input_names
    if "token_type_ids" in names:  # else the generic class returns no segment ids
        config["model_input_names"] = list(names)
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")


def write(job: ExportJob) -> list[str]:
    """Write the folder and verify it with transformers; returns the report lines."""
    method = job.loaded.meta.get("method", "full")
    if method in NO_HF_EQUIVALENT:
        raise ConfigError(
            f"format=hf: {job.loaded.step_dir} is {method}-tuned; its learned "
            f"{'prefix' if method == 'prefix' else 'soft prompt'} has no place in a plain "
            "Hugging Face model (export a full, freeze or lora checkpoint, or use "
            "format=onnx|torchscript|pt2)"
        )
    (transformers,) = require("hf", "transformers")
    model = job.loaded.model
    arch_name = hf_class_name(model.config, tuple(model.heads))
    body = _config_json(job)
    (job.out / "config.json").write_text(json.dumps(body, indent=2) + "\n")
    # tied keys left out: safetensors refuses shared storage, and HF re-ties them on load
    save_file(
        to_hf_state_dict(model, include_tied=False), job.out / "model.safetensors", {"format": "pt"}
    )
    _write_tokenizer(job, job.out)
    auto = AUTO_CLASSES[tuple(model.heads)]
    if model.kind == Kind.ENCODER_DECODER:
        auto = "AutoModelForSeq2SeqLM" if model.heads else "AutoModel"
    lines = [f"wrote {job.out}: {arch_name} (load with transformers.{auto} and AutoTokenizer)"]
    if not model.heads:
        _write_sentence_encoder(job)
        lines.append(
            f"sentence embeddings: {job.inference.pooling} pooling, L2-normalised "
            "(modules.json and 1_Pooling/ for sentence-transformers)"
        )
    return [*lines, _verify(job, transformers, auto, arch_name)]


def _write_sentence_encoder(job: ExportJob) -> None:
    """The sentence-transformers description of the folder: transformer, pooling, normalise
    (training compared embeddings by cosine, so the normalised vector is the embedding)."""
    kinds = ("Transformer", "Pooling", "Normalize")
    paths = ("", "1_Pooling", "2_Normalize")
    modules = [
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
        for i, (kind, path) in enumerate(zip(kinds, paths, strict=True))
    ]
    _write_json(job.out / "modules.json", modules)
    mode = job.inference.pooling
    _write_json(
        job.out / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": job.loaded.config.model.d_model,
            "pooling_mode_cls_token": mode == "cls",
            "pooling_mode_mean_tokens": mode == "mean",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        },
    )
    (job.out / "2_Normalize").mkdir()
    max_len = job.loaded.config.model.max_seq_len
    _write_json(job.out / "sentence_bert_config.json", {"max_seq_length": max_len})


def _write_json(path: Path, body: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body, indent=2) + "\n")


@torch.no_grad()
def _verify(job: ExportJob, transformers, auto: str, arch_name: str) -> str:
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    folder = str(job.out)
    hint = "upgrade transformers (pip install -U transformers)"
    with external(job, f"transformers could not load {folder}", hint):
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        hf = getattr(transformers, auto).from_pretrained(folder).eval()
    sample = job.sample
    n, width = sample["input_ids"].shape
    max_len = job.loaded.config.model.max_seq_len
    encoded = tokenizer(list(SAMPLE_TEXTS[:n]), padding=True, truncation=True, max_length=max_len)
    if encoded["input_ids"] != sample["input_ids"].tolist():
        raise VerificationError(
            f"{folder}: AutoTokenizer encodes the sample texts differently from llmtune's tokenizer"
        )
    if type(hf).__name__ != arch_name:
        raise VerificationError(f"transformers.{auto} built {type(hf).__name__}, not {arch_name}")
    with external(job, f"transformers could not run {folder}", hint):
        outputs = hf(**sample)
    if arch_name == "BertForPreTraining":
        got = (outputs.prediction_logits, outputs.seq_relationship_logits)
    elif auto == "AutoModel":  # pooled and normalised as sentence-transformers would
        pooled = pool_hidden(
            outputs.last_hidden_state, sample["attention_mask"], job.inference.pooling
        )
        got = (torch.nn.functional.normalize(pooled, dim=-1),)
    else:
        got = (outputs.logits,)
    report = verify(job, got, f"transformers.{auto}")
    if auto == "AutoModelForSeq2SeqLM":
        report += "; " + _same_greedy_generations(job, hf)
    return report


def _same_greedy_generations(job: ExportJob, hf) -> str:
    """transformers' generate and llmtune's greedy decoding write the same tokens."""
    sample, eos = job.sample, job.loaded.info.eos_id
    cfg = EvaluateConfig(max_new_tokens=GENERATION_CHECK_TOKENS)
    rows = [r[m.bool()].tolist() for r, m in zip(sample["input_ids"], sample["attention_mask"])]
    ours = [g.token_ids for g in generate(job.loaded.model, rows, cfg, eos)]
    theirs = hf.generate(
        input_ids=sample["input_ids"],
        attention_mask=sample["attention_mask"],
        max_new_tokens=GENERATION_CHECK_TOKENS,
        do_sample=False,
        num_beams=1,
        # transformers 5.25 sizes the decoder's cache by the encoder's layer count
        use_cache=False,
    )
    cut = [row[1:] for row in theirs.tolist()]  # without the start token, cut after EOS
    cut = [row[: row.index(eos) + 1] if eos in row else row for row in cut]
    if ours != cut:
        raise VerificationError(
            f"{job.out}: transformers' greedy generate writes other tokens than llmtune's"
        )
    return f"greedy generations identical ({GENERATION_CHECK_TOKENS} new tokens per sample)"
