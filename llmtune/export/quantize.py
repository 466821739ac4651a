"""Weight quantization of a model's Linear layers for CPU inference, through torchao (the
maintained successor of torch.ao.quantization): int8 dynamic activations with int8 weights,
int8 weight-only, int4 weight-only; and the deprecated torch.ao path as a fallback for int8."""

from __future__ import annotations

import copy
import importlib.util
import logging
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from llmtune.errors import ConfigError, UserError
from llmtune.models import LanguageModel
from llmtune.models.heads import LMHead

QUANT_HINT = "pip install 'llmtune[export]'"  # torchao is part of the export extra
# format -> what it does, for messages and the README
SCHEMES = {
    "int8": "int8 weights, activations quantized to int8 per row at run time (torchao)",
    "int8wo": "int8 weights, fp32 activations (torchao weight-only)",
    "int4wo": "int4 weights in groups of 32, fp32 activations (torchao weight-only, CPU kernel)",
}
INT4_GROUP = 32  # int4 weights share a scale per group of this many inputs


@dataclass
class Quantized:
    model: LanguageModel
    backend: str  # torchao | torch.ao (deprecated)
    notes: list[str]  # what a user should know (the output projection, the fallback)


def torchao_available() -> bool:
    return importlib.util.find_spec("torchao") is not None


def quantize(model: LanguageModel, fmt: str) -> Quantized:
    """A quantized copy of `model` (which is left as it is)."""
    if not torchao_available():
        if fmt != "int8":
            raise ConfigError(f"format={fmt} needs torchao, which is not installed: {QUANT_HINT}")
        return _legacy_int8(model)
    copied = copy.deepcopy(model)
    notes = _untie_output_projection(copied)
    notes += _torchao(copied, fmt)
    return Quantized(copied, "torchao", notes)


def _untie_output_projection(model: LanguageModel) -> list[str]:
    """Give a tied GPT output projection its own nn.Linear, so it is quantized too: it is the
    largest matmul of a small decoder. The embedding table stays fp32 (a lookup gains nothing)."""
    head = next((m for name, m in model.heads.items() if name == "lm"), None)
    if not isinstance(head, LMHead):
        return []
    tied = head.weight is getattr(model.backbone, "tok_emb", nn.Embedding(1, 1)).weight
    linear = nn.Linear(head.weight.shape[1], head.weight.shape[0], bias=False)
    linear.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=False)
    model.heads["lm"] = linear
    if not tied:
        return ["output projection (lm head): quantized"]
    size = head.weight.numel() / 1e6
    return [
        f"output projection (lm head, tied to the {size:.2f}M-entry embedding): quantized as "
        "its own copy; the embedding table stays fp32, so the file holds both"
    ]


def _int4_fits(module: nn.Module) -> bool:
    """The CPU int4 kernel packs 16 output rows at a time and groups of INT4_GROUP inputs."""
    return module.out_features % 16 == 0 and module.in_features % INT4_GROUP == 0


def _torchao(model: LanguageModel, fmt: str) -> list[str]:
    logging.getLogger("torchao").setLevel(logging.ERROR)  # kernels for other devices: noise
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torchao.quantization as q

        if fmt == "int8":
            config = q.Int8DynamicActivationInt8WeightConfig()
        elif fmt == "int8wo":
            config = q.Int8WeightOnlyConfig()
        else:
            config = _int4_config()
        linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        small = [n for n, m in linears if fmt == "int4wo" and not _int4_fits(m)]
        q.quantize_(
            model,
            config,
            filter_fn=lambda m, name: isinstance(m, nn.Linear) and name not in small,
        )
    if not small:
        return []
    # e.g. a classifier's [labels x D] output: too few rows to pack, and tiny anyway
    return [f"int4wo: {', '.join(small)} kept in fp32 (its shape does not fit the int4 kernel)"]


def _int4_config() -> object:
    """torchao's int4 weight-only config with a CPU kernel (aten._weight_int4pack_mm_for_cpu).
    Its stable Int4WeightOnlyConfig runs on CUDA only (mslk or tinygemm kernels) in 0.18."""
    try:
        from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig
    except ImportError:
        raise UserError(
            "format=int4wo: this torchao has no int4 weight-only kernel for the CPU "
            "(torchao.prototype.quantization.int4); use format=int8wo or format=int8"
        ) from None
    return PrototypeInt4WeightOnlyConfig(group_size=INT4_GROUP)


def _legacy_int8(model: LanguageModel) -> Quantized:
    """torch.ao.quantization.quantize_dynamic: deprecated since torch 2.10."""
    quantize_dynamic = getattr(torch.ao.quantization, "quantize_dynamic", None)
    if quantize_dynamic is None:
        raise ConfigError(
            f"format=int8 needs torchao ({QUANT_HINT}); torch {torch.__version__} no longer has "
            "the old torch.ao.quantization.quantize_dynamic"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation is said below, once, in our words
        quantized = quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
    note = (
        "torchao is not installed: used torch.ao.quantization.quantize_dynamic, deprecated "
        f"since torch 2.10 and due for removal ({QUANT_HINT} for the maintained path); the "
        "tied output projection stays fp32 there"
    )
    return Quantized(quantized, "torch.ao (deprecated)", [note])
