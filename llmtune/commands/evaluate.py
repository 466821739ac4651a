"""`llmtune evaluate`: a checkpoint -> metrics on data.test and/or completions of prompts.

data.test is scored by what the checkpoint is: a task checkpoint through its objective
(seq_cls, token_cls, sft), a language model by perplexity (gpt) or masked-LM loss (bert),
or with evaluate.label_words, a gpt by zero/few-shot classification.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import datasets
import torch

from llmtune.config.schema import RunConfig
from llmtune.console import console as shared_console
from llmtune.console import note, stage
from llmtune.data.chat import chat_prompt
from llmtune.errors import ConfigError, DataError
from llmtune.evaluation.data import labelled_rows, read_prompts
from llmtune.evaluation.embeddings import evaluate_embeddings
from llmtune.evaluation.language_model import evaluate_language_model
from llmtune.evaluation.preference import evaluate_preferences
from llmtune.evaluation.report import (
    GENERATIONS,
    PREDICTIONS,
    RESULTS,
    show_generations,
    show_results,
    write_json,
    write_jsonl,
)
from llmtune.evaluation.tasks import TASK_SCORING, evaluate_task
from llmtune.evaluation.zero_shot import LabelWords, classify, few_shot_block, fill
from llmtune.loading import LoadedCheckpoint, load_checkpoint
from llmtune.models import Kind
from llmtune.models.generation import generate
from llmtune.models.registry import names_of_kind
from llmtune.objectives import OBJECTIVES, Scoring
from llmtune.objectives.metrics import classification_report
from llmtune.objectives.seq2seq import Seq2SeqConfig
from llmtune.objectives.sft import PromptedConfig
from llmtune.train.hardware import resolve_runtime


def _zero_shot(loaded: LoadedCheckpoint, config: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Classify data.test by label-word likelihood; metrics when it has labels."""
    cfg, labels = config.evaluate, LabelWords.from_config(config.evaluate)
    rows, has_labels = labelled_rows(config.data, "test")
    rows = rows[: cfg.max_examples] if cfg.max_examples else rows
    prefix = ""
    if cfg.few_shot:
        train_rows, train_labelled = labelled_rows(config.data, "train")
        if not train_labelled:
            raise DataError(
                f"data.train: no label column '{config.data.label_column}' for few-shot "
                "examples; set data.label_column"
            )
        prefix = few_shot_block(train_rows, labels, cfg, config.seed)
    prompts = [prefix + fill(cfg.template, row) for row in rows]
    settings = (loaded.info.pad_id, cfg.batch_size)
    predicted, scores = classify(loaded.model, loaded.tokenizer, prompts, labels, settings)
    names = labels.names
    predictions = [
        {**row, "prediction": names[p], "scores": dict(zip(names, s))}
        for row, p, s in zip(rows, predicted, scores)
    ]
    write_jsonl(run_dir / PREDICTIONS, predictions)
    results: dict[str, Any] = {"task": "zero_shot" if not cfg.few_shot else "few_shot"}
    if not has_labels:  # batch inference: nothing to compare with
        return {**results, "n_examples": len(rows), "predictions_file": PREDICTIONS}
    truth = [names[labels.index(row["label"], "data.test")] for row in rows]
    report = classification_report(truth, [names[p] for p in predicted], names)
    return {**results, **report, "predictions_file": PREDICTIONS}


def _evaluate_data(loaded: LoadedCheckpoint, config: RunConfig, run_dir: Path) -> dict[str, Any]:
    objective = loaded.meta.get("objective", loaded.config.objective.name)
    # a Hugging Face folder (objective "none") is scored as what its model is
    found = OBJECTIVES.get(objective)
    scoring = found.scoring if found is not None else Scoring.LANGUAGE_MODEL
    if scoring == Scoring.EMBEDDINGS or config.evaluate.embeddings:
        return evaluate_embeddings(loaded, config)
    if not loaded.model.heads:  # e.g. a Hugging Face BertModel folder: a backbone alone
        raise ConfigError(
            f"ckpt={config.ckpt}: a backbone with no head (no language model or classifier to "
            "score data.test with); evaluate its embeddings with evaluate.embeddings=true and "
            "a labelled data.test"
        )
    if scoring == Scoring.PAIRWISE:  # reward models and dpo: pairwise metrics
        return evaluate_preferences(loaded, config.data, config.evaluate, config.seed)
    if scoring in TASK_SCORING:
        results, rows = evaluate_task(loaded, config.data, config.evaluate, config.seed)
        if rows:
            write_jsonl(run_dir / PREDICTIONS, rows)
            results["predictions_file"] = PREDICTIONS
        return results
    if config.evaluate.label_words:
        if loaded.model.kind != Kind.DECODER:
            raise ConfigError(
                f"evaluate.label_words: zero/few-shot scoring needs a {names_of_kind(Kind.DECODER)}"
                f" checkpoint; {loaded.step_dir} is a {loaded.family} model"
            )
        return _zero_shot(loaded, config, run_dir)
    return evaluate_language_model(loaded, config.data, config.evaluate, config.seed)


def _generate(loaded: LoadedCheckpoint, config: RunConfig, prompts: list[str]) -> list[dict]:
    generator = torch.Generator().manual_seed(config.seed)
    eos = loaded.stop_id
    rows = []
    # sft and the preference tunings after it all answer prompts laid out by the template
    trained = loaded.config.objective
    template = trained.prompt_template if isinstance(trained, PromptedConfig) else ""
    # an instruction-tuned model answers prompts laid out as it was trained; a chat model's
    # prompt is a user turn in its chat template
    if loaded.config.tokenizer.chat_template:
        texts = [chat_prompt(loaded.config.tokenizer, p) for p in prompts]
    else:
        texts = [template.replace("{instruction}", p) if template else p for p in prompts]
    if isinstance(trained, Seq2SeqConfig):  # a text-to-text model reads its task prefix first
        texts = [trained.source_prefix + t for t in texts]
    ids = [loaded.tokenizer.encode(t, add_special_tokens=False).ids for t in texts]
    outs = generate(loaded.model, ids, config.evaluate, eos, generator)
    for prompt, out in zip(prompts, outs):
        text_ids = [t for t in out.token_ids if t != eos]
        rows.append(
            {
                "prompt": prompt,
                "completion": loaded.tokenizer.decode(text_ids),
                "new_tokens": len(out.token_ids),
                "prompt_tokens": out.prompt_tokens,
                "stop": out.stop_reason,
            }
        )
    return rows


def run(config: RunConfig, run_dir: Path) -> None:
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    # read prompts before loading anything: a missing file should fail in a second
    prompts = read_prompts(config.prompts) if config.prompts else []
    runtime = resolve_runtime(config.hardware)
    torch.manual_seed(config.seed)
    with stage("checkpoint", f"loading {config.ckpt}"):
        loaded = load_checkpoint(config.ckpt, runtime.device)
        note(f"{loaded.family} {list(loaded.model.heads)} from {loaded.step_dir}")
    if prompts and (loaded.model.kind == Kind.ENCODER or "lm" not in loaded.model.heads):
        writers = names_of_kind(Kind.DECODER, Kind.ENCODER_DECODER)
        raise ConfigError(
            f"prompts: generation needs a {writers} checkpoint with an lm "
            f"head; {loaded.step_dir} is a {loaded.family} model with heads "
            f"{', '.join(loaded.model.heads)}"
        )
    console = shared_console()  # no wrapping off a terminal
    results: dict[str, Any] = {
        "ckpt": str(loaded.step_dir),
        "step": loaded.meta.get("step"),
        "family": loaded.family,
        "objective": loaded.meta.get("objective", loaded.config.objective.name),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    if config.data.test:
        results.update(_evaluate_data(loaded, config, run_dir))
    if prompts:
        start = time.perf_counter()
        rows = _generate(loaded, config, prompts)
        seconds = time.perf_counter() - start
        write_jsonl(run_dir / GENERATIONS, rows)
        new_tokens = sum(r["new_tokens"] for r in rows)
        results.update({"n_prompts": len(rows), "generations_file": GENERATIONS})
        # prompts in, completions out (tokenizing included): what a user waits for
        results["generation_tokens_per_s"] = round(new_tokens / max(seconds, 1e-9), 1)
        show_generations(console, rows)
    write_json(run_dir / RESULTS, results)
    show_results(console, f"evaluate {loaded.step_dir}", results)
    console.print(f"results: {run_dir / RESULTS}")
