"""Value checks across a `RunConfig`, run before any data or model is touched."""

from __future__ import annotations

import dataclasses
import re

from llmtune.config import objective_checks
from llmtune.config.schema import DataConfig, RunConfig, TokenizerConfig
from llmtune.errors import ConfigError

FAMILIES = ("bert", "gpt")
NATIVE_OBJECTIVE = {"bert": "mlm", "gpt": "clm"}
OBJECTIVE_FAMILIES = {
    "mlm": ("bert",),
    "mlm_nsp": ("bert",),
    "clm": ("gpt",),
    "seq_cls": FAMILIES,
    "token_cls": FAMILIES,
    "sft": ("gpt",),
    "reward": FAMILIES,
    "dpo": ("gpt",),
    "ppo": ("gpt",),
    "contrastive": FAMILIES,
    "multitask": FAMILIES,
}
# labelled data (or several tasks' data): finetune only
TASK_OBJECTIVES = ("seq_cls", "token_cls", "sft", "contrastive", "multitask")
TASK_OBJECTIVES += ("reward", "dpo", "ppo")
PREFERENCE_PAIRS = ("columns", "other_response", "shuffled_response")
METHODS = ("full", "freeze", "lora", "prefix", "prompt")
PROMPT_ENCODERS = ("none", "mlp", "lstm")
CLASS_WEIGHTS = ("none", "balanced")
NATIVE_TOKENIZER = {"bert": "wordpiece", "gpt": "bpe"}
TOKENIZER_KINDS = ("wordpiece", "bpe", "file")
DATA_SOURCES = ("builtin", "files", "hub", "mix")  # mix: data.mix names several
OVERLONG = ("truncate", "drop", "error")  # data.overlong (data/overlong.py)
SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
EXPORT_FORMATS = ("hf", "onnx", "torchscript", "pt2", "int8")
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
    """Replace 'auto' objective and tokenizer choices by the family's native ones."""
    family = config.model.family
    if family not in FAMILIES:
        raise ConfigError(f"model.family={family!r}: expected one of {', '.join(FAMILIES)}")
    objective, tokenizer = config.objective, config.tokenizer
    if objective.name == "auto":
        objective = dataclasses.replace(objective, name=NATIVE_OBJECTIVE[family])
    if tokenizer.kind == "auto":
        tokenizer = dataclasses.replace(tokenizer, kind=NATIVE_TOKENIZER[family])
    return dataclasses.replace(config, objective=objective, tokenizer=tokenizer)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    _require(value in allowed, f"{key}={value!r}: expected one of {', '.join(allowed)}")


def _check_model(config: RunConfig) -> None:
    m = config.model
    for key in ("d_model", "n_layers", "n_heads", "d_ff", "max_seq_len", "n_positions"):
        _require(getattr(m, key) > 0, f"model.{key}={getattr(m, key)}: must be positive")
    _require(m.vocab_size >= 0, f"model.vocab_size={m.vocab_size}: must be >= 0 (0 = tokenizer's)")
    _require(
        m.d_model % m.n_heads == 0,
        f"model.n_heads={m.n_heads} does not divide model.d_model={m.d_model}",
    )
    _require(
        m.max_seq_len <= m.n_positions,
        f"model.max_seq_len={m.max_seq_len} exceeds the position table "
        f"(model.n_positions={m.n_positions})",
    )
    for key in ("dropout", "attn_dropout"):
        _require(0 <= getattr(m, key) < 1, f"model.{key}={getattr(m, key)}: must be in [0, 1)")


def _check_objective(config: RunConfig) -> None:
    o, family = config.objective, config.model.family
    families = OBJECTIVE_FAMILIES.get(o.name)
    _require(
        families is not None,
        f"objective.name={o.name!r}: expected one of {', '.join(OBJECTIVE_FAMILIES)}",
    )
    # finetune takes its model from the checkpoint: `check_model_fits` runs once it is known
    _require(
        config.command == "finetune" or family in families,
        f"objective={o.name} needs a {'/'.join(families)} model, but model.family={family}",
    )
    _require(
        o.name not in TASK_OBJECTIVES or config.command not in ("pretrain", "prepare"),
        f"objective={o.name} needs labelled data; use `llmtune finetune` for it",
    )
    _one_of("objective.class_weights", o.class_weights, CLASS_WEIGHTS)
    _require(0 < o.mask_prob < 1, f"objective.mask_prob={o.mask_prob}: must be in (0, 1)")
    for key in ("mask_token_frac", "random_token_frac"):
        _require(0 <= getattr(o, key) <= 1, f"objective.{key}={getattr(o, key)}: must be in [0, 1]")
    _require(
        o.mask_token_frac + o.random_token_frac <= 1,
        "objective.mask_token_frac + objective.random_token_frac must be <= 1",
    )
    _require(0 <= o.nsp_prob <= 1, f"objective.nsp_prob={o.nsp_prob}: must be in [0, 1]")
    _one_of("data.preference_pairs", config.data.preference_pairs, PREFERENCE_PAIRS)
    _check_preference(config)

    if o.name == "contrastive":
        objective_checks.check_contrastive(config)
    objective_checks.check_tasks(config)


def _check_preference(config: RunConfig) -> None:
    """dpo/ipo and ppo settings (ignored by other objectives, so checked only for them)."""
    o = config.objective
    if o.name == "dpo":
        _one_of("objective.loss", o.loss, ("dpo", "ipo"))
        _require(o.beta > 0, f"objective.beta={o.beta}: must be positive")
    if o.name != "ppo":
        return
    _require(
        bool(o.reward_model),
        "objective.reward_model is required with objective=ppo; set it to a checkpoint "
        "trained with objective=reward",
    )
    for key in ("kl_coef", "clip_range", "value_clip", "value_coef", "sample_temperature"):
        _require(getattr(o, key) >= 0, f"objective.{key}={getattr(o, key)}: must be >= 0")
    for key in ("gamma", "lam"):
        _require(0 <= getattr(o, key) <= 1, f"objective.{key}={getattr(o, key)}: must be in [0, 1]")
    for key in ("ppo_epochs", "max_new_tokens"):
        _require(getattr(o, key) > 0, f"objective.{key}={getattr(o, key)}: must be positive")


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
    per_step = t.micro_batch_size * h.world_size
    _require(
        t.global_batch_size % per_step == 0,
        f"train.global_batch_size={t.global_batch_size} is not divisible by "
        f"train.micro_batch_size={t.micro_batch_size} x world size {h.world_size}",
    )
    parse_duration(t.max_time)
    _one_of("train.on_nonfinite", t.on_nonfinite, ("stop", "skip"))
    _one_of("hardware.strategy", h.strategy, ("none", "ddp", "fsdp"))
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
    _one_of("data.source", d.source, DATA_SOURCES)
    _one_of("data.overlong", d.overlong, OVERLONG)
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
        "init_from is required; set init_from=<checkpoint step folder or run dir> or hf:<folder>",
    )
    _one_of("method.name", m.name, METHODS)
    _one_of("method.prompt_encoder", m.prompt_encoder, PROMPT_ENCODERS)
    _require(m.freeze_layers >= -1, f"method.freeze_layers={m.freeze_layers}: -1 (all) or >= 0")
    for key in ("rank", "n_tokens"):
        _require(getattr(m, key) > 0, f"method.{key}={getattr(m, key)}: must be positive")
    _require(m.alpha > 0, f"method.alpha={m.alpha}: must be positive")
    _require(0 <= m.dropout < 1, f"method.dropout={m.dropout}: must be in [0, 1)")
    _require(m.encoder_hidden >= 0, f"method.encoder_hidden={m.encoder_hidden}: must be >= 0")
    _require(bool(m.targets), "method.targets is empty; name Linear layers, e.g. [qkv,proj]")
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
    _require(
        config.format != "int8" or bool(config.data.test),
        "format=int8 measures the metric before and after quantization on held-out data; "
        "set data.test=<path> (the keys evaluate reads)",
    )


def check_model_fits(config: RunConfig) -> None:
    """Model checks, and that the objective suits the family (finetune: once the model is known)."""
    _check_model(config)
    families = OBJECTIVE_FAMILIES[config.objective.name]
    _require(
        config.model.family in families,
        f"objective={config.objective.name} needs a {'/'.join(families)} model, "
        f"but the checkpoint is a {config.model.family} model",
    )
    objective_checks.check_task_families(config, OBJECTIVE_FAMILIES)


def validate(config: RunConfig) -> None:
    """Raise ConfigError naming the first invalid key."""
    if config.command == "finetune":
        _check_finetune(config)
    else:
        _check_model(config)
    _check_objective(config)
    _check_training(config)
    _check_data(config)
    if config.command == "evaluate":
        _check_evaluate(config)
        objective_checks.check_embedding_evaluation(config)
    if config.command == "export":
        _check_export(config)
