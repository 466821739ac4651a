"""`apply_kernels`: put the CPU kernels in place of the plain torch layers of a built model,
from the outside (as adapters/lora.py puts LoRALinear in place of nn.Linear)."""

from __future__ import annotations

import torch
from torch import nn

from llmtune.kernels.dropout import CpuDotProductAttention, CpuDropout
from llmtune.models.blocks import DotProductAttention


def _cpu_kernel(module: nn.Module) -> nn.Module | None:
    """The CPU kernel layer computing what `module` computes, or None to keep it. Exact types
    only: a subclass (a kernel already swapped in) is left as it is."""
    if type(module) is nn.Dropout:
        kernel: nn.Module = CpuDropout(module.p, module.inplace)
    elif type(module) is DotProductAttention:
        kernel = CpuDotProductAttention(module.p, module.scale)
    else:
        return None
    return kernel.train(module.training)


def apply_kernels(model: nn.Module, device: torch.device) -> int:
    """Swap the CPU kernels into `model` in place when it trains on a CPU; return how many
    layers were swapped. Parameters, buffers and checkpoint keys stay as they are.

    The kernels compute the same functions (in eval mode, bit for bit); only how dropout
    draws its masks changes. On a GPU torch's own kernels are fused already: nothing changes.
    """
    if device.type != "cpu":
        return 0
    swapped = 0
    for name, module in list(model.named_modules()):
        kernel = _cpu_kernel(module)
        if kernel is None or not name:  # the root cannot be replaced in place
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, kernel)
        swapped += 1
    return swapped
