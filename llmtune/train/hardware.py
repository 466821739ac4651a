"""Device, precision and thread settings for a run, resolved once from `HardwareConfig`."""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from llmtune.config.schema import HardwareConfig
from llmtune.errors import ConfigError
from llmtune.kernels import apply_kernels, bf16_products, bf16_via_fp32

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str  # fp32 | bf16 | fp16 (resolved, never auto)
    threads: int

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return _DTYPES[self.precision]

    @contextlib.contextmanager
    def autocast(self):
        """Mixed-precision context for forward passes (a no-op in fp32)."""
        if self.autocast_dtype is None:
            yield
            return
        device, dtype = self.device.type, self.autocast_dtype
        # on a CPU without bf16 units, products run in fp32 arithmetic (see kernels/bf16.py)
        with torch.autocast(device, dtype=dtype), bf16_products(device, dtype):
            yield


def resolve_runtime(cfg: HardwareConfig) -> Runtime:
    """Pick the device and precision, and set torch's CPU thread count."""
    has_cuda = torch.cuda.is_available()
    if cfg.device == "cuda" and not has_cuda:
        raise ConfigError("hardware.device=cuda but no CUDA device is visible; use hardware=cpu")
    device = torch.device(
        "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and has_cuda) else "cpu"
    )
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("hardware.precision=fp16 needs a GPU; use fp32 or bf16 on the CPU")
    if (
        cfg.compile
        and cfg.activation_checkpointing
        and bf16_via_fp32(device.type, _DTYPES[precision])
    ):
        raise ConfigError(
            "hardware.compile=true with hardware.activation_checkpointing=true cannot run bf16 on "
            "this CPU (no bf16 matmul units); turn one of them off or use hardware.precision=fp32"
        )
    threads = cfg.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    return Runtime(device=device, precision=precision, threads=threads)


def _recompute_contexts():
    """Called during the forward. Backward's recomputation runs outside Runtime.autocast:
    torch restores the autocast state there, and this restores the forward's bf16 products."""
    cpu_dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
    return contextlib.nullcontext(), bf16_products("cpu", cpu_dtype)


def prepare_model(model: torch.nn.Module, cfg: HardwareConfig) -> torch.nn.Module:
    """Make a built model (on its device, adapters applied) ready to train, in place: the CPU
    kernels (llmtune/kernels), then hardware.activation_checkpointing and hardware.compile.

    All act on submodules without wrapping them, so parameter names (checkpoint keys)
    stay as they are: no `_orig_mod.` or `_checkpoint_wrapped_module.` prefixes.
    """
    apply_kernels(model, next(model.parameters()).device)
    backbone = getattr(model, "backbone", None)
    # non-reentrant checkpointing: works with keyword arguments and no-grad evaluation.
    # torch.compile accepts only dispatch modes from a context_fn; resolve_runtime refuses
    # the one compiled case that would need it (bf16 products through fp32)
    kwargs: dict = {"use_reentrant": False}
    if not cfg.compile:
        kwargs["context_fn"] = _recompute_contexts
    if cfg.activation_checkpointing and backbone is not None:
        for block in backbone.blocks:
            block.forward = functools.partial(checkpoint, block.forward, **kwargs)
    if cfg.compile:
        # objectives call model.backbone and model.heads directly, so compile those modules;
        # Module.compile() compiles in place and keeps state_dict keys unchanged
        targets = [backbone, *getattr(model, "heads", {}).values()] if backbone else [model]
        for module in targets:
            module.compile()
    return model
