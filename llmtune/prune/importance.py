"""How much a checkpoint needs each of its parts, measured on data: the loss of its own
objective on batches of data.train, the rise of that loss when one block is skipped (layer
drop), and each MLP neuron's and attention head's first-order (Taylor) importance |dL/dm| for
a gate m = 1 on its output (heads as Michel et al. 2019, "Are Sixteen Heads Really Better
than One?")."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from llmtune.config.schema import RunConfig
from llmtune.data import iter_eval_batches
from llmtune.data.labelled import padded_batch
from llmtune.data.pipeline import test_store
from llmtune.errors import DataError
from llmtune.evaluation.tasks import TASK_SCORING, task_split
from llmtune.loading import LoadedCheckpoint
from llmtune.models import Kind
from llmtune.objectives import OBJECTIVES, Context, entry

Batch = dict[str, Tensor]


@dataclasses.dataclass
class LossData:
    objective: object  # the checkpoint's objective (a task's, or clm / mlm)
    batches: list[Batch]  # prepared (targets drawn once, so every measurement sees the same)


def loss_data(loaded: LoadedCheckpoint, config: RunConfig) -> LossData:
    """`prune.batches` batches of data.train in the form the checkpoint's objective reads."""
    data = dataclasses.replace(config.data, test=config.data.train)  # read train as evaluate would
    cfg, generator = config.evaluate, torch.Generator().manual_seed(config.seed)
    name = loaded.meta.get("objective", loaded.config.objective.name)
    found = OBJECTIVES.get(name)
    if found is not None and found.scoring in TASK_SCORING:
        objective, _, encoded, has_targets = task_split(loaded, data, cfg)
        if encoded is None or not has_targets:
            raise DataError(f"data.train={data.train}: no targets to measure {name} loss on")
        examples = padded_batch(encoded, loaded.info.pad_id)
    else:  # a language model: its native objective on packed text
        native = "clm" if loaded.model.kind == Kind.DECODER else "mlm"
        config_lm = dataclasses.replace(loaded.config, objective=entry(native).config())
        ctx = Context(config_lm, loaded.tokenizer, loaded.info, loaded.model.kind)
        objective = entry(native).make(ctx, [])
        store = test_store(data, loaded.tokenizer, config.seed)  # data.test is data.train here
        examples = objective.make_examples(store, loaded.config.model.max_seq_len, config.seed)
    batches = []
    for batch in iter_eval_batches(examples, cfg.batch_size):
        batches.append(objective.prepare(batch, generator))
        if len(batches) == config.prune.batches:
            break
    if not batches:
        raise DataError(f"data.train={data.train}: no examples to measure importance on")
    return LossData(objective, batches)


def mean_loss(model: nn.Module, data: LossData) -> Tensor:
    """The objective's mean loss per target over the batches (differentiable)."""
    total, count = 0.0, 0
    for batch in data.batches:
        terms = data.objective.losses(model, batch)
        counts = data.objective.count(batch)
        total = total + sum(t.loss_sum for t in terms.values())
        count += int(sum(c.sum() for c in counts.values()))
    return total / max(count, 1)


def blocks_of(model: nn.Module) -> nn.ModuleList:
    return model.backbone.blocks


@torch.no_grad()
def block_importance(model: nn.Module, data: LossData) -> list[float]:
    """For each block: the loss with that block skipped (its input passed on) minus the loss."""
    base = float(mean_loss(model, data))
    out = []
    for block in blocks_of(model):
        handle = block.register_forward_hook(_skip)
        try:
            out.append(float(mean_loss(model, data)) - base)
        finally:
            handle.remove()
    return out


def _skip(module: nn.Module, args: tuple, output: object) -> object:
    """A block's output replaced by its input (with its cache untouched when it returns one)."""
    return (args[0], output[1]) if isinstance(output, tuple) else args[0]


def neuron_importance(model: nn.Module, data: LossData) -> list[Tensor]:
    """For each block: [d_ff] |dL/dm| of a gate m = 1 on each MLP neuron (after its GELU)."""
    gates = [torch.ones(b.mlp.fc.out_features, requires_grad=True) for b in blocks_of(model)]
    handles = [
        block.mlp.proj.register_forward_pre_hook(_gate(gate))
        for block, gate in zip(blocks_of(model), gates)
    ]
    try:
        with torch.enable_grad():
            mean_loss(model, data).backward()
    finally:
        for handle in handles:
            handle.remove()
        model.zero_grad(set_to_none=True)
    return [gate.grad.abs() for gate in gates]


def head_importance(model: nn.Module, data: LossData) -> list[Tensor]:
    """For each block: [its heads] |dL/dm| of a gate m = 1 on each head's output, summed over
    the batches' absolute values and scaled to unit L2 norm per block (Michel et al.: so the
    heads of blocks with larger gradients do not crowd out the others in one global ranking)."""
    blocks = blocks_of(model)
    gates = [torch.ones(b.attn.n_heads, requires_grad=True) for b in blocks]
    handles = [gate_heads(b.attn, g) for b, g in zip(blocks, gates)]
    totals = [torch.zeros(b.attn.n_heads) for b in blocks]
    try:
        with torch.enable_grad():
            for batch in data.batches:  # |grad| per batch: signs of batches do not cancel
                mean_loss(model, LossData(data.objective, [batch])).backward()
                for total, gate in zip(totals, gates):
                    total += gate.grad.abs()
                    gate.grad = None
    finally:
        for handle in handles:
            handle.remove()
        model.zero_grad(set_to_none=True)
    return [t / t.norm().clamp(min=1e-20) for t in totals]


def gate_heads(attn: nn.Module, gate: Tensor) -> torch.utils.hooks.RemovableHandle:
    """Scale each head's output (attention's input to `proj`, [B,T,H*head]) by gate [H]."""

    def hook(module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        heads = x.unflatten(-1, (attn.n_heads, attn.head_size)) * gate.to(x.dtype)[:, None]
        return (heads.flatten(-2),)

    return attn.proj.register_forward_pre_hook(hook)


def _gate(gate: Tensor):
    def hook(module: nn.Module, args: tuple) -> tuple:
        return (args[0] * gate.to(args[0].dtype),)

    return hook


def ranked(scores: list[float]) -> Iterator[int]:
    """Indices from the least to the most important."""
    return iter(sorted(range(len(scores)), key=lambda i: scores[i]))
