"""Multi-task: stacked examples, per-task terms, and exact weighting under accumulation."""

from __future__ import annotations

import pytest
import torch

from llmtune.config.schema import (
    FilesData,
    HardwareConfig,
    RunConfig,
    TaskConfig,
    TrainConfig,
)
from llmtune.objectives import build_objective, entry
from llmtune.objectives.mlm import MLMConfig
from llmtune.objectives.multitask import MultiTask, MultitaskConfig, stack_tasks, task_runs
from llmtune.objectives.seq_cls import SequenceClassification
from llmtune.train.loop import Trainer
from tests.unit.train.test_accumulation import BERT_INFO, cpu_trainer, examples, tiny_model

WEIGHTS = {"mlm": 0.5, "seq_cls": 2.0}


def _parts() -> tuple[dict, dict]:
    mlm = build_objective(MLMConfig(), BERT_INFO)
    cls = SequenceClassification(BERT_INFO, ["a", "b"], None, None)
    lm_rows = examples("bert", n=6)
    lm_rows.pop("nsp_labels")
    cls_rows = examples("bert", n=6, seq=12)  # another width: stacking keeps each task's own
    cls_rows["labels"] = cls_rows.pop("nsp_labels")
    return {"mlm": mlm, "seq_cls": cls}, {"mlm": lm_rows, "seq_cls": cls_rows}


def _trainer(tmp_path) -> Trainer:
    objectives, per_task = _parts()
    data = stack_tasks(per_task)
    # interleave the tasks so each half of the batch holds both, in unequal numbers
    order = torch.tensor([0, 6, 1, 7, 8, 2, 3, 9, 10, 11, 4, 5])
    data = {k: v[order] for k, v in data.items()}
    config = RunConfig(
        command="finetune",
        model=tiny_model(n_layers=1),
        train=TrainConfig(global_batch_size=12, micro_batch_size=6),
        hardware=HardwareConfig(device="cpu", precision="fp32"),
    )
    objective = MultiTask(objectives, WEIGHTS, data)
    return cpu_trainer(config, objective, data, tmp_path, n_labels=2)


def _grads(t: Trainer, micro_batches) -> tuple[list[torch.Tensor], float]:
    t.model.zero_grad(set_to_none=True)
    loss, _, _ = t.accumulate_gradients(micro_batches)
    return [p.grad.clone() for p in t.model.parameters() if p.grad is not None], float(loss)


def test_stacked_rows_keep_their_task_and_width():
    _, per_task = _parts()
    data = stack_tasks(per_task)
    assert data["task"].tolist() == [0] * 6 + [1] * 6
    assert data["mlm/input_ids"].shape == (12, 16) and data["seq_cls/input_ids"].shape == (12, 12)
    torch.testing.assert_close(data["seq_cls/labels"][6:], per_task["seq_cls"]["labels"])


def test_weighted_loss_is_exact_under_accumulation(tmp_path):
    t = _trainer(tmp_path)
    g = torch.Generator().manual_seed(3)
    batch = t.s.objective.prepare(t.s.train_examples, g)
    assert set(t.s.objective.count(batch)) == {"mlm", "seq_cls"}
    raw = t.s.train_examples
    halves = [
        t.s.objective.prepare({k: v[:6] for k, v in raw.items()}, torch.Generator().manual_seed(3)),
        t.s.objective.prepare({k: v[6:] for k, v in raw.items()}, torch.Generator().manual_seed(4)),
    ]
    objective = t.s.objective
    # one micro-batch holding exactly the halves' prepared rows, task by task
    merged = {"task": torch.cat([h["task"] for h in halves])}
    for name in ("mlm", "seq_cls"):
        subs = [objective._own(h, name) for h in halves]
        for key in subs[0]:
            width = max(s[key].shape[1] for s in subs) if subs[0][key].dim() == 2 else None
            parts = [
                torch.nn.functional.pad(s[key], (0, width - s[key].shape[1])) if width else s[key]
                for s in subs
            ]
            merged[f"{name}/{key}"] = torch.cat(parts)
    merged["input_ids"] = torch.cat([h["input_ids"] for h in halves], 1)
    (split, split_loss), (one, one_loss) = _grads(t, halves), _grads(t, [merged])
    for a, b in zip(split, one, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert split_loss == pytest.approx(one_loss, rel=1e-6)
    # the step loss is sum_t w_t * (task t's summed loss / its global count)
    t.model.eval()  # unweighted terms
    with torch.no_grad():
        terms = objective.losses(t.model, merged)
    counts = objective.count(merged)
    expected = sum(WEIGHTS[n] * float(terms[n].loss_sum) / float(counts[n]) for n in WEIGHTS)
    assert one_loss == pytest.approx(expected, rel=1e-5)


def test_task_runs_take_their_own_files_and_objective():
    config = RunConfig(
        command="finetune",
        data=FilesData(train="l.jsonl", validation="v.jsonl"),
        objective=MultitaskConfig(),
        tasks={"domain": TaskConfig(objective="mlm", train="d.txt"), "seq_cls": TaskConfig()},
    )
    runs = dict(task_runs(config, entry))
    assert runs["domain"].objective.name == "mlm" and runs["domain"].data.train == "d.txt"
    assert runs["domain"].data.validation == ""  # carved from d.txt, not the labelled file
    assert (
        runs["seq_cls"].objective.name == "seq_cls" and runs["seq_cls"].data.validation == "v.jsonl"
    )
    assert not runs["seq_cls"].tasks
