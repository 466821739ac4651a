"""Scoring of generated text on data.test: a seq2seq checkpoint's targets (teacher-forced
loss, then generated targets against the references: exact match, ROUGE, BLEU, chrF), and
an sft checkpoint's generated responses (evaluate.generative_metrics)."""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Any

import torch

from llmtune.config.schema import DataConfig, EvaluateConfig
from llmtune.data import iter_eval_batches
from llmtune.data.labelled import load_table
from llmtune.data.overlong import fit_to_length
from llmtune.evaluation.data import column_names
from llmtune.evaluation.generative_metrics import generative_metrics
from llmtune.loading import LoadedCheckpoint
from llmtune.models.generation import generate
from llmtune.objectives import Context, entry

Rows = list[dict[str, Any]]


@torch.no_grad()
def _target_loss(loaded: LoadedCheckpoint, task, examples: dict, batch_size: int) -> dict:
    """Mean loss (and perplexity) of the reference targets, teacher-forced."""
    device = next(loaded.model.parameters()).device
    loss_sum, count = 0.0, 0
    for batch in iter_eval_batches(examples, batch_size):
        batch = {k: v.to(device) for k, v in task.prepare(batch, None).items()}
        count += int(task.count(batch)[task.lm_term])
        loss_sum += float(task.losses(loaded.model, batch)[task.lm_term].loss_sum)
    loss = loss_sum / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "n_targets": count}


def decoded(loaded: LoadedCheckpoint, token_ids: list[int]) -> str:
    """Generated ids as text, without the end-of-text token."""
    return loaded.tokenizer.decode([t for t in token_ids if t != loaded.info.eos_id])


def evaluate_seq2seq(
    loaded: LoadedCheckpoint, data: DataConfig, cfg: EvaluateConfig, seed: int
) -> tuple[dict[str, Any], Rows]:
    """(results, rows) of a seq2seq checkpoint on data.test: generated targets (greedy,
    sampled or beam search, as evaluate.* says) and, when the split holds the target
    column, their metrics against it plus the references' teacher-forced loss."""
    objective = loaded.config.objective
    source, target = objective.source_column, objective.target_column
    has_targets = target in column_names(data, "test")
    split = load_table(data, "test", [source, target] if has_targets else [source])
    if cfg.max_examples and len(split) > cfg.max_examples:
        split = split.select(range(cfg.max_examples))
    config = dataclasses.replace(loaded.config, data=data)
    task = entry("seq2seq").make(
        Context(config, loaded.tokenizer, loaded.info, loaded.model.kind), []
    )
    seq_len = loaded.config.model.max_seq_len
    if not has_targets:  # the encoder reads what training fed it: prefix + source, cut, EOS
        split = split.add_column(target, [""] * len(split))
    encode = partial(task.encode, seq_len=seq_len, key="test")
    split, encoded, note = fit_to_length(split, encode, data, "test", seq_len)
    if note:
        print(note)
    generator = torch.Generator().manual_seed(seed)
    outs = generate(loaded.model, encoded.rows["input_ids"], cfg, loaded.info.eos_id, generator)
    predictions = [decoded(loaded, o.token_ids) for o in outs]
    rows = [
        {"source": s, "prediction": p, "stop": o.stop_reason}
        for s, p, o in zip(split[source], predictions, outs)
    ]
    results: dict[str, Any] = {"task": "seq2seq", "n_examples": len(split)}
    if not has_targets:
        return results, rows
    references = [str(t) for t in split[target]]
    for row, reference in zip(rows, references):
        row["target"] = reference
    results |= _target_loss(loaded, task, task.batch(encoded), cfg.batch_size)
    return results | generative_metrics(predictions, references), rows
