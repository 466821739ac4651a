"""Language-model quality on data.test: causal perplexity for decoders, masked-LM
loss/perplexity with fixed-seed masks for encoders (not pseudo-perplexity)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from llmtune.config.schema import DataConfig, EvaluateConfig
from llmtune.data import iter_eval_batches
from llmtune.data.pipeline import test_store
from llmtune.errors import DataError
from llmtune.evaluation.likelihood import perplexity
from llmtune.loading import LoadedCheckpoint
from llmtune.models import Kind
from llmtune.objectives import Context, entry


@torch.no_grad()
def masked_lm_loss(loaded: LoadedCheckpoint, token_ids, cfg: EvaluateConfig, seed: int) -> dict:
    """Mean masked-LM loss over masks drawn once from `seed` (so reruns compare exactly),
    with the checkpoint's own masking settings."""
    mlm = entry("mlm")
    settings = dataclasses.asdict(loaded.config.objective)  # e.g. mlm_nsp's mask_prob
    keys = {f.name for f in dataclasses.fields(mlm.config)} - {"name"}
    objective_cfg = mlm.config(**{k: settings[k] for k in keys if k in settings})
    config = dataclasses.replace(loaded.config, objective=objective_cfg)
    objective = mlm.make(Context(config, loaded.tokenizer, loaded.info, loaded.model.kind), [])
    try:
        examples = objective.make_examples(token_ids, loaded.config.model.max_seq_len, seed)
    except DataError:
        raise DataError("data.test: too little text for one masked-LM example; add text") from None
    generator = torch.Generator().manual_seed(seed)
    device = next(loaded.model.parameters()).device
    loss_sum, correct, count = 0.0, 0.0, 0
    for batch in iter_eval_batches(examples, cfg.batch_size):
        batch = objective.prepare(batch, generator)
        count += int(objective.count(batch)["mlm"])
        terms = objective.losses(loaded.model, {k: v.to(device) for k, v in batch.items()})
        loss_sum += float(terms["mlm"].loss_sum)
        correct += float(terms["mlm"].n_correct)
    loss = loss_sum / max(count, 1)
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "mlm_accuracy": correct / max(count, 1),
        "n_targets": count,
        "n_sequences": len(examples),
        "note": f"masked-LM loss at mask_prob={objective_cfg.mask_prob} with masks fixed by "
        f"seed={seed}; not pseudo-perplexity",
    }


def evaluate_language_model(
    loaded: LoadedCheckpoint, data: DataConfig, cfg: EvaluateConfig, seed: int
) -> dict[str, Any]:
    """Perplexity (a decoder) or masked-LM loss (an encoder) of the checkpoint on data.test."""
    if cfg.max_examples:  # the first max_examples documents
        data = dataclasses.replace(
            data, max_docs=min(data.max_docs or cfg.max_examples, cfg.max_examples)
        )
    store = test_store(data, loaded.tokenizer, seed)
    if loaded.model.kind == Kind.DECODER:
        documents = [store.document(i).tolist() for i in range(store.n_docs)]
        results = perplexity(loaded.model, documents, loaded.info.eos_id, cfg.batch_size)
        return {"task": "causal_lm", **results}
    return {
        "task": "masked_lm",
        "n_examples": store.n_docs,
        **masked_lm_loss(loaded, store, cfg, seed),
    }
