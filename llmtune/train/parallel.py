"""DDP or FSDP2 applied to a built model from the outside, and full state dicts, so that
checkpoints keep the single-process format (and resume) whatever the world size."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from llmtune import checkpoint, loading
from llmtune.config.schema import RunConfig
from llmtune.errors import CheckpointError
from llmtune.faults import fault_point
from llmtune.objectives import Objective
from llmtune.train.distributed import comm_device, current


class _ObjectiveForward(torch.nn.Module):
    """The objective's losses as a module forward: DDP/FSDP hooks run around the whole call."""

    def __init__(self, model: torch.nn.Module, objective: Objective) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: dict[str, Tensor]) -> dict:
        return self.objective.losses(self.model, batch)


def _sum_hook(state, bucket):  # noqa: ANN001  (DDP checks the annotation; strings fail it)
    """Sum (not average) gradients: each rank's loss is already divided by the global count."""
    work = dist.all_reduce(bucket.buffer(), async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


class Parallel:
    """How the loop's model runs across ranks: the loss call, gradient sync, full state dicts.

    With one process (or strategy none) every method is the plain single-process behaviour.
    `self.model` stays the unwrapped model, so checkpoint keys never carry `module.` prefixes.
    """

    def __init__(self, model: torch.nn.Module, objective: Objective, strategy: str) -> None:
        self.model = model
        self.objective = objective
        self.info = current()
        self.strategy = strategy if self.info.world_size > 1 else "none"
        forward = _ObjectiveForward(model, objective)
        if self.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            device = next(model.parameters()).device
            forward = DistributedDataParallel(
                forward,
                device_ids=[device.index] if device.type == "cuda" else None,
                broadcast_buffers=False,  # buffers are deterministic (position ids, masks)
                find_unused_parameters=True,  # e.g. BERT's pooler when only MLM trains
            )
            forward.register_comm_hook(None, _sum_hook)
        elif self.strategy == "fsdp":
            forward = _fully_shard(forward, model)
        self.forward = forward

    @property
    def is_main(self) -> bool:
        return self.info.is_main

    def batches(self, examples: dict[str, Tensor], config: RunConfig) -> Any:
        """This rank's shard of the shuffled training stream (no overlap, nothing lost)."""
        from llmtune.data import train_batches

        # pretraining rows are packed to full length; labelled rows vary and pad per batch
        grouped = config.data.group_by_length and not self.objective.packed
        return train_batches(examples, config, (self.info.rank, self.info.world_size), grouped)

    def data_state(self, batches: Any) -> dict[str, int]:
        return {**batches.state_dict(), "world_size": self.info.world_size}

    def data_position(self, data: dict[str, int]) -> dict[str, int]:
        """A saved data position as this world size's (see rescale_data_position)."""
        return rescale_data_position(data, self.info.world_size)

    def losses(self, batch: dict[str, Tensor]) -> dict:
        """objective.losses(model, batch), through the DDP/FSDP wrapper when there is one."""
        return self.forward(batch)

    @contextlib.contextmanager
    def sync(self, last: bool) -> Iterator[None]:
        """Around a micro-batch's forward and backward: reduce gradients on the last one only."""
        if self.strategy == "ddp" and not last:
            with self.forward.no_sync():
                yield
            return
        if self.strategy == "fsdp":
            self.forward.set_requires_gradient_sync(last)
        yield

    def clip_grad_norm(self, params: list[torch.nn.Parameter], max_norm: float) -> Tensor:
        """The global gradient norm (a plain tensor, equal on every rank), clipping to max_norm."""
        fault_point("train.step")  # reliability tests: kill or fail one rank mid-training
        if self.strategy == "fsdp":
            # FSDP averages over ranks (gloo has no pre-multiplied sum to change that); the
            # losses are already divided by the global count, so undo the average.
            grads = [p.grad for p in params if p.grad is not None]
            torch._foreach_mul_(grads, self.info.world_size)
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            return norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        # clip_grad_norm_ is these two calls, except that it always scales, by exactly 1.0 when
        # the norm is within max_norm (or clipping is off): a pass over every gradient that
        # changes nothing (0.3 ms a step on bert-tiny). Skipping it costs a host sync, which
        # the loop's non-finite check makes right after anyway.
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        if max_norm / (norm + 1e-6) < 1:  # torch's coefficient; a NaN norm skips the step
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
        return norm

    # ---- state dicts ------------------------------------------------------------------------
    def model_weights(self, trainable_only: bool) -> dict[str, Tensor]:
        """Full weights as checkpoint.model_weights gives them; FSDP gathers them to rank 0."""
        keep = _weights(self.model, trainable_only)
        if self.strategy != "fsdp":
            return keep
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        full = get_model_state_dict(self.model, options=options)  # empty on ranks > 0
        return {k: full[k] for k in keep if k in full}

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """Full optimizer state; FSDP's is keyed by parameter name, loadable at any world size."""
        if self.strategy != "fsdp":
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_optimizer_state_dict(self.model, optimizer, options=options)

    def load_weights(self, weights: dict[str, Tensor], source: Path, trainable_only: bool) -> None:
        if self.strategy != "fsdp":
            adapter = (True,) if trainable_only else ()  # adapter runs: trained weights only
            loading.load_into(self.model, weights, source, *adapter)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        expected = set(_weights(self.model, trainable_only))
        if set(weights) != expected:
            odd = sorted(set(weights) ^ expected)[:3]
            raise CheckpointError(f"{source}: weights do not fit this model ({', '.join(odd)})")
        options = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(self.model, weights, options=options)

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        """Load an optimizer state saved at any world size, by ids or by parameter names."""
        by_name = any(isinstance(k, str) for k in state.get("state", {})) or any(
            isinstance(p, str) for g in state.get("param_groups", []) for p in g["params"]
        )
        if not by_name and self.strategy != "fsdp":
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        if not by_name:
            state = _keyed_by_name(state, optimizer, self.model)
        options = StateDictOptions(full_state_dict=True)
        set_optimizer_state_dict(self.model, optimizer, state, options=options)


def _weights(model: torch.nn.Module, trainable_only: bool) -> dict[str, Tensor]:
    """checkpoint.model_weights; only the trained weights in adapter runs."""
    if trainable_only:
        return checkpoint.model_weights(model, trainable_only=True)
    return checkpoint.model_weights(model)


def _fully_shard(forward: torch.nn.Module, model: torch.nn.Module) -> torch.nn.Module:
    """FSDP2: one unit per transformer block, the rest (embeddings, heads) in the root unit."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(comm_device().type, (dist.get_world_size(),))
    for block in model.backbone.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(forward, mesh=mesh)
    return forward


def _keyed_by_name(state: dict, optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> dict:
    """An id-keyed optimizer state (single process, DDP) keyed by parameter names instead."""
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    saved_ids = [i for g in state["param_groups"] for i in g["params"]]
    name_of = dict(zip(saved_ids, order, strict=True))
    groups = [{**g, "params": [name_of[i] for i in g["params"]]} for g in state["param_groups"]]
    return {"state": {name_of[i]: s for i, s in state["state"].items()}, "param_groups": groups}


def rescale_data_position(data: dict[str, int], world_size: int) -> dict[str, int]:
    """A data position saved at another world size, as this one's: same samples per epoch.

    Rows are dealt to ranks by rank, so after a world-size change the current epoch's order
    differs (the step, optimizer and schedule continue exactly).
    """
    saved = int(data.get("world_size", world_size))
    if saved == world_size:
        return data
    return {**data, "position": int(data["position"]) * saved // world_size}
