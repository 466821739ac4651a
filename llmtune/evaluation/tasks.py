"""Evaluation of fine-tuned task checkpoints on data.test through their own objective:
seq_cls (accuracy, P/R/F1, confusion), token_cls (entity P/R/F1 per type), sft (response
loss; with evaluate.generative_metrics also generated answers scored against the responses),
seq2seq (evaluation/seq2seq.py). Without the label column the split is predicted only
(predictions.jsonl)."""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Any

import datasets
import torch

from llmtune.config.schema import DataConfig, EvaluateConfig
from llmtune.data import iter_eval_batches
from llmtune.data.labelled import Encoded, as_words, load_table, padded_batch
from llmtune.data.overlong import fit_to_length
from llmtune.evaluation.data import column_names
from llmtune.evaluation.generative_metrics import generative_metrics
from llmtune.evaluation.seq2seq import evaluate_seq2seq
from llmtune.loading import LoadedCheckpoint
from llmtune.models.generation import generate
from llmtune.objectives import Context, Scoring, entry
from llmtune.objectives.metrics import classification_report, entity_report

Rows = list[dict[str, Any]]
# checkpoints scored here, through their own objective
TASK_SCORING = (
    Scoring.CLASSIFICATION,
    Scoring.TAGGING,
    Scoring.INSTRUCTIONS,
    Scoring.GENERATION,
)


def task_split(loaded: LoadedCheckpoint, data: DataConfig, cfg: EvaluateConfig) -> tuple:
    """(task objective, test split, its encoding or None, whether it has targets); rows
    longer than the model's max_seq_len handled by data.overlong (the note says how)."""
    found = entry(loaded.meta["objective"])
    target = found.target_column(data)
    has_targets = target in column_names(data, "test")
    columns = found.columns(loaded.config.objective, data)
    split = load_table(data, "test", [c for c in columns if c != target or has_targets])
    if cfg.max_examples and len(split) > cfg.max_examples:
        split = split.select(range(cfg.max_examples))
    config = dataclasses.replace(loaded.config, data=data)  # its objective, evaluate's data
    ctx = Context(config, loaded.tokenizer, loaded.info, loaded.model.kind)
    task = found.make(ctx, loaded.meta.get("labels") or [])
    if found.scoring == Scoring.INSTRUCTIONS and not has_targets:  # prompts: generation
        return task, split, None, has_targets
    seq_len = loaded.config.model.max_seq_len
    encode = partial(task.encode, seq_len=seq_len, key="test")
    split, encoded, note = fit_to_length(split, encode, data, "test", seq_len)
    if note:
        print(note)
    return task, split, encoded, has_targets


@torch.no_grad()
def _argmax_batches(loaded: LoadedCheckpoint, task, examples: dict, batch_size: int) -> list:
    """Per-example argmax predictions ([T] rows for token_cls) and their confidence."""
    device = next(loaded.model.parameters()).device
    out = []
    for batch in iter_eval_batches(examples, batch_size):
        batch = {k: v.to(device) for k, v in task.prepare(batch, None).items()}
        probs = task.logits(loaded.model, batch).float().softmax(-1)
        confidence, predicted = probs.max(-1)
        out.extend(zip(predicted.cpu(), confidence.cpu(), batch["labels"].cpu()))
    return out


def _seq_cls(loaded, task, split, encoded: Encoded, has_labels: bool, batch_size: int) -> tuple:
    names = [str(x) for x in task.labels]
    if not has_labels:  # batching wants a labels tensor; it is never read
        encoded.rows["labels"] = [0] * len(encoded.rows["input_ids"])
    examples = padded_batch(encoded, loaded.info.pad_id)
    outputs = _argmax_batches(loaded, task, examples, batch_size)
    d = task.data
    texts = split[d.text_column]
    pairs = split[d.text_pair_column] if d.text_pair_column else None
    rows: Rows = []
    for i, (pred, conf, label) in enumerate(outputs):
        row = {"text": texts[i], **({"text_pair": pairs[i]} if pairs else {})}
        if has_labels:
            row["label"] = names[int(label)]
        rows.append({**row, "prediction": names[int(pred)], "confidence": float(conf)})
    if not has_labels:
        return rows, {}
    truth, predicted = [r["label"] for r in rows], [r["prediction"] for r in rows]
    return rows, classification_report(truth, predicted, names)


def _token_cls(loaded, task, split, encoded: Encoded, has_labels: bool, batch_size: int) -> tuple:
    names = [str(x) for x in task.labels]
    d = task.data
    words = [as_words(w) for w in split[d.tokens_column]]
    if has_labels:
        true_tags = [[str(t) for t in as_words(row)] for row in split[d.tags_column]]
    examples = padded_batch(encoded, loaded.info.pad_id)
    rows: Rows = []
    for i, (pred, _, labels) in enumerate(_argmax_batches(loaded, task, examples, batch_size)):
        # the first piece of each word carries its tag; words cut off by max_seq_len get O
        tags = [names[int(p)] for p in pred[labels != -100]]
        tags += ["O"] * (len(words[i]) - len(tags))
        row = {"tokens": words[i], "prediction": tags}
        if has_labels:
            row["tags"] = true_tags[i]
        rows.append(row)
    if not has_labels:
        return rows, {}
    return rows, entity_report([r["tags"] for r in rows], [r["prediction"] for r in rows])


@torch.no_grad()
def _sft(loaded, task, split, encoded: Encoded, cfg: EvaluateConfig) -> dict[str, Any]:
    """Mean loss of response tokens (and EOS) given the templated instruction."""
    examples = padded_batch(encoded, loaded.info.pad_id)
    device = next(loaded.model.parameters()).device
    loss_sum, count = 0.0, 0
    for batch in iter_eval_batches(examples, cfg.batch_size):
        batch = {k: v.to(device) for k, v in task.prepare(batch, None).items()}
        count += int(task.count(batch)[task.lm_term])
        loss_sum += float(task.losses(loaded.model, batch)[task.lm_term].loss_sum)
    loss = loss_sum / max(count, 1)
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "n_targets": count,
        "n_examples": len(split),
    }


def _sft_answers(loaded, task, split: datasets.Dataset, cfg: EvaluateConfig, seed: int) -> Rows:
    """Generated responses to the test instructions (batch inference of an sft model)."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    instructions = split[task.data.instruction_column]
    ids = [
        loaded.tokenizer.encode(task.prompt(i), add_special_tokens=False).ids for i in instructions
    ]
    outs = generate(loaded.model, ids, cfg, loaded.stop_id, generator)
    for instruction, out in zip(instructions, outs):
        text = loaded.tokenizer.decode([t for t in out.token_ids if t != loaded.stop_id])
        rows.append({"instruction": instruction, "prediction": text, "stop": out.stop_reason})
    return rows


def evaluate_task(
    loaded: LoadedCheckpoint, data: DataConfig, cfg: EvaluateConfig, seed: int
) -> tuple[dict[str, Any], Rows]:
    """(results, prediction rows) of a seq_cls/token_cls/sft checkpoint on data.test.
    Results hold metrics only when the split has its label (tags, response) column."""
    name = loaded.meta["objective"]
    scoring = entry(name).scoring
    if scoring == Scoring.GENERATION:
        return evaluate_seq2seq(loaded, data, cfg, seed)
    task, split, encoded, has_targets = task_split(loaded, data, cfg)
    results: dict[str, Any] = {"task": name}
    if scoring == Scoring.INSTRUCTIONS:
        if not has_targets:
            answers = _sft_answers(loaded, task, split, cfg, seed)
            return {**results, "n_examples": len(split)}, answers
        results |= _sft(loaded, task, split, encoded, cfg)
        if not cfg.generative_metrics:
            return results, []
        answers = _sft_answers(loaded, task, split, cfg, seed)
        references = [str(r) for r in split[task.data.response_column]]
        for row, reference in zip(answers, references):
            row["response"] = reference
        predictions = [row["prediction"] for row in answers]
        return results | generative_metrics(predictions, references), answers
    run = _seq_cls if scoring == Scoring.CLASSIFICATION else _token_cls
    rows, metrics = run(loaded, task, split, encoded, has_targets, cfg.batch_size)
    return {**results, "n_examples": len(rows), **metrics}, rows
