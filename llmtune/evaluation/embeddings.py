"""Embedding quality on a labelled split: leave-one-out kNN accuracy of cosine neighbours on
data.test, and with data.train a linear probe (logistic regression on frozen embeddings)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from llmtune.config.schema import RunConfig
from llmtune.data.labelled import encode_texts, label_ids, label_names, load_table, padded_batch
from llmtune.errors import ConfigError
from llmtune.loading import LoadedCheckpoint
from llmtune.models import Kind
from llmtune.models.pooling import embed_rows
from llmtune.models.registry import names_of_kind
from llmtune.objectives.contrastive import embedding_pooling


def knn_accuracy(embeddings: Tensor, labels: Tensor, k: int) -> float:
    """Share of rows whose k nearest other rows (cosine) vote for their label; ties go to the
    label of the nearest among the tied ones."""
    z = F.normalize(embeddings.float(), dim=-1)
    sims = (z @ z.T).fill_diagonal_(float("-inf"))  # leave one out: never its own neighbour
    k = min(k, len(z) - 1)
    nearest = sims.topk(k, dim=-1).indices  # [N,k], most similar first
    votes = F.one_hot(labels[nearest], int(labels.max()) + 1).float()  # [N,k,C]
    # a tiny bonus for closer neighbours breaks ties in their favour, never a majority
    bonus = torch.linspace(1e-3, 0, k)[None, :, None]
    predicted = (votes * (1 + bonus)).sum(1).argmax(-1)
    return float((predicted == labels).float().mean())


def linear_probe_accuracy(
    train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], n_classes: int
) -> float:
    """Accuracy on `test` of a softmax regression fitted (L-BFGS, light L2) on `train`."""
    x_train, y_train = train
    mean, std = x_train.mean(0), x_train.std(0).clamp(min=1e-6)
    x_train = (x_train - mean) / std
    probe = torch.nn.Linear(x_train.shape[1], n_classes)
    optimizer = torch.optim.LBFGS(probe.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(probe(x_train), y_train) + 1e-3 * probe.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        predicted = probe((test[0] - mean) / std).argmax(-1)
    return float((predicted == test[1]).float().mean())


def _embedded_split(
    loaded: LoadedCheckpoint, config: RunConfig, key: str, names: list | None
) -> tuple[Tensor, Tensor, list]:
    """(embeddings [N,D], label ids [N], label names) of data.<key>."""
    d, e = config.data, config.evaluate
    split = load_table(d, key, [d.text_column, d.label_column])
    if key == "test" and e.max_examples and len(split) > e.max_examples:
        split = split.select(range(e.max_examples))
    values = split[d.label_column]
    names = names or label_names(values)
    texts = [str(t) for t in split[d.text_column]]
    encoded = encode_texts(loaded.tokenizer, texts, None, loaded.config.model.max_seq_len)
    rows = padded_batch(encoded, loaded.info.pad_id)
    embeddings = embed_rows(loaded.model, rows, pooling_of(loaded, config), e.batch_size)
    return embeddings, torch.tensor(label_ids(values, names, key)), names


def pooling_of(loaded: LoadedCheckpoint, config: RunConfig) -> str:
    """evaluate.pooling, else the checkpoint's objective.pooling; cls needs an encoder."""
    pooling = config.evaluate.pooling or embedding_pooling(loaded.config.objective)
    if pooling == "cls" and loaded.model.kind != Kind.ENCODER:
        raise ConfigError(
            f"evaluate.pooling=cls needs a {names_of_kind(Kind.ENCODER)} checkpoint; "
            f"{loaded.step_dir} is a {loaded.family} model: use evaluate.pooling=mean"
        )
    return pooling


def evaluate_embeddings(loaded: LoadedCheckpoint, config: RunConfig) -> dict[str, Any]:
    """kNN (and with data.train, linear-probe) accuracy of the checkpoint's embeddings."""
    train = None
    if config.data.train:  # the probe's labels name the classes; test labels must be among them
        train = _embedded_split(loaded, config, "train", None)
    test, labels, names = _embedded_split(loaded, config, "test", train[2] if train else None)
    if len(test) < 2:
        raise ConfigError("data.test: kNN accuracy needs at least 2 labelled rows")
    majority = float(torch.bincount(labels).max()) / len(labels)
    results: dict[str, Any] = {
        "task": "embeddings",
        "pooling": pooling_of(loaded, config),
        "n_examples": len(test),
        "knn_k": config.evaluate.knn_k,
        "knn_accuracy": knn_accuracy(test, labels, config.evaluate.knn_k),
        "majority_accuracy": majority,
    }
    if train is not None:
        probe = linear_probe_accuracy(train[:2], (test, labels), len(names))
        results.update(linear_probe_accuracy=probe, n_train_examples=len(train[0]))
    return results
