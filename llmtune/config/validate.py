"""Value checks across a `RunConfig`, run before any data or model is touched."""

from __future__ import annotations

import dataclasses
import re

from llmtune.config.schema import DataConfig, FilesData, ModelConfig, RunConfig, TokenizerConfig
from llmtune.data.preference import PAIR_MODES
from llmtune.errors import ConfigError
from llmtune.models.family import Kind
from llmtune.models.registry import family as family_of
from llmtune.models.registry import names_of_kind
from llmtune.objectives.contrastive import POOLINGS
from llmtune.objectives.registry import OBJECTIVES
from llmtune.objectives.registry import entry as objective_entry

TOKENIZER_KINDS = ("wordpiece", "bpe", "unigram", "file")
OVERLONG = ("truncate", "drop", "error")  # data.overlong (data/overlong.py)
SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
STRATEGIES = ("none", "ddp", "fsdp")  # hardware.strategy (train/parallel.py)
EXPORT_FORMATS = ("hf", "gguf", "onnx", "torchscript", "pt2", "int8", "int8wo", "int4wo")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """'90s', '10m', '2h', '1.5d' or a bare number of seconds -> seconds; '' -> 0 (no limit)."""
    if not text:
        return 0.0
    match = _DURATION.match(text)
    if not match:
        raise ConfigError(f"train.max_time={text!r}: expected a duration like 90s, 10m or 2h")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def resolve_auto(config: RunConfig) -> RunConfig:
    """Replace 'auto' objective and tokenizer choices by the family's native ones (once the
    family is known: finetune resolves them after reading its checkpoint). The native
    objective takes its defaults, which are its YAML's (configs/objective/<name>.yaml)."""
    if not isinstance(config.model, ModelConfig) or not config.model.family:
        return config
    family = family_of(config.model.family)
    objective, tokenizer = config.objective, config.tokenizer
    if objective.name == "auto":
        objective = objective_entry(family.native_objective).config()
    if tokenizer.kind == "auto":
        tokenizer = dataclasses.replace(tokenizer, kind=family.tokenizer)
    return dataclasses.replace(config, objective=objective, tokenizer=tokenizer)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    _require(value in allowed, f"{key}={value!r}: expected one of {', '.join(allowed)}")


def _check_objective(config: RunConfig, kind: Kind | None) -> None:
    """The objective suits the command, the data and (once known) the model family's kind."""
    o = config.objective
    composite = [n for n, e in OBJECTIVES.items() if e.composite]
    if o.name == "auto":  # finetune: the checkpoint's family decides (check_model_fits)
        _require(not config.tasks, f"tasks.* is set; add objective={'|'.join(composite)}")
        return
    entry = objective_entry(o.name)
    if kind is not None and kind not in entry.kinds:
        raise ConfigError(
            f"objective={o.name} needs a {names_of_kind(*entry.kinds)} model, but model.family="
            f"{config.model.family}"
        )
    _require(
        not entry.labelled or config.command not in ("pretrain", "prepare"),
        f"objective={o.name} needs labelled data; use `llmtune finetune` for it",
    )
    _require(
        not entry.labelled or isinstance(config.data, FilesData),
        f"data.source={config.data.source}: labelled fine-tuning data must be local files; "
        "use data=files data.train=<path>",
    )
    _require(
        entry.composite or not config.tasks,
        f"tasks.{next(iter(config.tasks), '')} is set but objective={o.name}; "
        f"add objective={'|'.join(composite)}",
    )
    _check_packing(config)
    entry.check(config, kind)


def _check_packing(config: RunConfig) -> None:
    """data.packing=true: an objective that packs its rows, a method that keeps rows apart."""
    if not getattr(config.data, "packing", False):
        return
    packs = [n for n, e in OBJECTIVES.items() if e.packing]
    _require(
        objective_entry(config.objective.name).packing,
        f"data.packing=true packs the labelled examples of objective={'|'.join(packs)}, not "
        f"objective={config.objective.name}'s; drop data.packing",
    )
    _require(
        config.method.positions == 0,
        f"data.packing=true: method={config.method.name} puts its own positions before each "
        "row, which packed examples cannot share; drop data.packing or use method=full|freeze|lora",
    )


def _check_training(config: RunConfig) -> None:
    t, o, h = config.train, config.optim, config.hardware
    _require(o.lr > 0, f"optim.lr={o.lr}: must be positive")
    _require(o.weight_decay >= 0, f"optim.weight_decay={o.weight_decay}: must be >= 0")
    _require(0 <= o.beta1 < 1 and 0 <= o.beta2 < 1, "optim.beta1 and optim.beta2 must be in [0, 1)")
    _require(o.warmup_steps >= 0, f"optim.warmup_steps={o.warmup_steps}: must be >= 0")
    _require(0 <= o.min_lr_ratio <= 1, f"optim.min_lr_ratio={o.min_lr_ratio}: must be in [0, 1]")
    _require(o.grad_clip >= 0, f"optim.grad_clip={o.grad_clip}: must be >= 0 (0 disables)")
    _one_of("optim.name", o.name, ("adamw",))
    _one_of("optim.schedule", o.schedule, SCHEDULES)
    _one_of("hardware.precision", h.precision, PRECISIONS)
    _one_of("hardware.device", h.device, DEVICES)
    _require(h.threads >= 0, f"hardware.threads={h.threads}: must be >= 0 (0 = all cores)")
    for key in (
        "max_steps",
        "global_batch_size",
        "micro_batch_size",
        "eval_every",
        "save_every",
        "log_every",
    ):
        _require(getattr(t, key) > 0, f"train.{key}={getattr(t, key)}: must be positive")
    _require(t.max_tokens >= 0, f"train.max_tokens={t.max_tokens}: must be >= 0")
    _require(t.max_epochs >= 0, f"train.max_epochs={t.max_epochs}: must be >= 0 (0 = off)")
    _require(
        not (t.max_epochs and config.data.streaming),
        f"train.max_epochs={t.max_epochs}: a stream (data.streaming=true) has no known size to "
        "count passes over; use train.max_steps or train.max_tokens",
    )
    per_step = t.micro_batch_size * h.world_size
    _require(
        t.global_batch_size % per_step == 0,
        f"train.global_batch_size={t.global_batch_size} is not divisible by "
        f"train.micro_batch_size={t.micro_batch_size} x world size {h.world_size}",
    )
    parse_duration(t.max_time)
    _one_of("train.on_nonfinite", t.on_nonfinite, ("stop", "skip"))
    _one_of("hardware.strategy", h.strategy, STRATEGIES)
    _require(h.nproc >= 1, f"hardware.nproc={h.nproc}: must be >= 1")
    _require(h.num_workers >= 0, f"hardware.num_workers={h.num_workers}: must be >= 0")
    _require(
        h.strategy != "none" or max(h.nproc, h.world_size) == 1,
        f"{max(h.nproc, h.world_size)} processes need hardware=ddp or hardware=fsdp "
        "(hardware.strategy=none trains one process alone)",
    )
    _require(parse_duration(h.timeout) > 0, f"hardware.timeout={h.timeout!r}: must be positive")
    _require(
        config.checkpoint.keep_last >= 1,
        f"checkpoint.keep_last={config.checkpoint.keep_last}: must be >= 1",
    )


def _check_data(config: RunConfig) -> None:
    d, tok = config.data, config.tokenizer
    if isinstance(d, FilesData):
        _one_of("data.overlong", d.overlong, OVERLONG)
        _one_of("data.preference_pairs", d.preference_pairs, PAIR_MODES)
    # evaluate and export read data.test only (data.train just for few-shot examples)
    _require(
        d.source != "files" or bool(d.train) or config.command in ("evaluate", "export"),
        "data.train is required with data=files; set data.train=<path or glob>",
    )
    _require(d.source != "hub" or bool(d.name), "data.name is required with data=hub")
    for key in ("train", "validation", "test"):  # else the run would silently ignore the file
        path = getattr(d, key)
        _require(
            d.source == "files" or not path,
            f"data.{key}={path} is set, but data={d.source} reads no files; add data=files",
        )
    _require(
        0 < d.validation_fraction < 1,
        f"data.validation_fraction={d.validation_fraction}: must be in (0, 1)",
    )
    _check_corpora(d, tok)
    if config.command not in ("pretrain", "prepare"):  # the others take the checkpoint's
        return
    _one_of("tokenizer.kind", tok.kind, TOKENIZER_KINDS)
    _require(tok.kind != "file" or bool(tok.path), "tokenizer.path is required with tokenizer=file")
    _require(
        tok.kind == "file" or tok.vocab_size >= 300,
        f"tokenizer.vocab_size={tok.vocab_size}: must be >= 300 to train a tokenizer",
    )


def _check_corpora(d: DataConfig, tok: TokenizerConfig) -> None:
    """The pretraining data path: tokenizing processes, streaming, and the corpora of data=mix."""
    _require(d.num_proc >= 1, f"data.num_proc={d.num_proc}: must be >= 1")
    _require(
        not d.streaming or d.source == "hub",
        f"data.streaming=true streams a Hub dataset, but data={d.source}; use data=hub",
    )
    _require(
        not d.streaming or tok.kind == "file" or tok.train_docs > 0,
        "data.streaming=true: set tokenizer.train_docs=<n> (the stream's first n documents "
        "train the tokenizer) or use tokenizer=file",
    )
    _require(
        not d.streaming or not (d.dedupe or d.max_docs),
        "data.dedupe and data.max_docs need the whole corpus; a stream (data.streaming=true) "
        "takes neither",
    )
    _require(
        (d.source == "mix") == bool(d.mix),
        "data=mix needs data.mix={<name>:{train:<path>,weight:<w>},...}"
        if d.source == "mix"
        else f"data.mix is set, but data={d.source} reads one corpus; add data=mix",
    )
    for name, m in d.mix.items():
        key = f"data.mix.{name}"
        _one_of(f"{key}.source", m.source, ("builtin", "files", "hub"))
        _require(m.weight > 0, f"{key}.weight={m.weight}: must be positive")
        _require(m.source != "files" or bool(m.train), f"{key}.train is required (files)")
        _require(m.source != "hub" or bool(m.name), f"{key}.name is required (hub)")


def _check_evaluate(config: RunConfig) -> None:
    e, d = config.evaluate, config.data
    _require(bool(config.ckpt), "ckpt is required; set ckpt=<step folder or run directory>")
    _require(
        bool(config.prompts) or bool(d.test),
        "nothing to evaluate; set data=files data.test=<path> and/or prompts=<file or list>",
    )
    for key in ("batch_size", "max_new_tokens"):
        _require(getattr(e, key) > 0, f"evaluate.{key}={getattr(e, key)}: must be positive")
    for key in ("max_examples", "top_k", "few_shot"):
        _require(getattr(e, key) >= 0, f"evaluate.{key}={getattr(e, key)}: must be >= 0")
    _require(e.temperature >= 0, f"evaluate.temperature={e.temperature}: must be >= 0 (0 = greedy)")
    _require(0 < e.top_p <= 1, f"evaluate.top_p={e.top_p}: must be in (0, 1]")
    _require(
        not e.label_names or len(e.label_names) == len(e.label_words),
        f"evaluate.label_names has {len(e.label_names)} entries but evaluate.label_words has "
        f"{len(e.label_words)}; give one name per word",
    )
    _require(
        not e.few_shot or bool(d.train),
        "evaluate.few_shot needs labelled examples; set data.train=<path>",
    )


def _check_finetune(config: RunConfig) -> None:
    m, t = config.method, config.train
    _require(
        bool(config.init_from),
        "init_from is required; set init_from=<step folder or run dir>, hf:<folder> or gguf:<file>",
    )
    m.check()
    _require(t.patience >= 0, f"train.patience={t.patience}: must be >= 0 (0 = off)")
    _require(
        config.model.max_seq_len >= 0,
        f"model.max_seq_len={config.model.max_seq_len}: must be >= 0 (0 = the checkpoint's)",
    )


def _check_export(config: RunConfig) -> None:
    e = config.export
    _require(bool(config.ckpt), "ckpt is required; set ckpt=<step folder or run directory>")
    _require(bool(config.format), f"format is required; set format=<{'|'.join(EXPORT_FORMATS)}>")
    _one_of("format", config.format, EXPORT_FORMATS)
    _require(bool(config.out), "out is required; set out=<folder to write>")
    _require(e.atol > 0, f"export.atol={e.atol}: must be positive")
    _require(e.max_metric_drop >= 0, f"export.max_metric_drop={e.max_metric_drop}: must be >= 0")
    _require(e.latency_runs > 0, f"export.latency_runs={e.latency_runs}: must be positive")
    _one_of("export.gguf_type", e.gguf_type, ("f16", "f32"))
    _require(
        config.format not in ("int8", "int8wo", "int4wo") or bool(config.data.test),
        f"format={config.format} measures the metric before and after quantization on held-out "
        "data; set data.test=<path> (the keys evaluate reads)",
    )


def check_model_fits(config: RunConfig) -> None:
    """Model checks, and that the objective suits the family (finetune: once the model is known)."""
    config.model.check()
    kind = family_of(config.model.family).kind
    entry = objective_entry(config.objective.name)
    _require(
        kind in entry.kinds,
        f"objective={entry.name} needs a {names_of_kind(*entry.kinds)} model, "
        f"but the checkpoint is a {config.model.family} model",
    )
    _check_packing(config)
    entry.check(config, kind)


def _check_embeddings(config: RunConfig) -> None:
    e = config.evaluate
    _require(
        e.pooling in ("", *POOLINGS),
        f"evaluate.pooling={e.pooling!r}: expected one of {', '.join(POOLINGS)} "
        "(or empty for the checkpoint's)",
    )
    _require(e.knn_k >= 1, f"evaluate.knn_k={e.knn_k}: must be >= 1")


def validate(config: RunConfig) -> None:
    """Raise ConfigError naming the first invalid key."""
    kind = None
    if config.command == "finetune":
        _check_finetune(config)
    elif config.command in ("pretrain", "prepare"):
        config.model.check()
        kind = family_of(config.model.family).kind
    if config.command in ("pretrain", "prepare", "finetune"):  # evaluate, export train nothing
        _check_objective(config, kind)
        _check_training(config)
    _check_data(config)
    if config.command == "evaluate":
        _check_evaluate(config)
        _check_embeddings(config)
    if config.command == "export":
        _check_export(config)
    if config.command == "chat":
        _require(
            bool(config.ckpt), "ckpt is required; set ckpt=<checkpoint>, hf:<dir> or gguf:<file>"
        )
        _require(config.evaluate.max_new_tokens > 0, "evaluate.max_new_tokens: must be positive")
