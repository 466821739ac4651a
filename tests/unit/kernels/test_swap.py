"""apply_kernels: the CPU kernels replace every plain dropout and attention layer of a built
model (adapters' included), keep its checkpoint keys and, in eval mode, its outputs exactly."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from llmtune.adapters import apply_method
from llmtune.adapters.lora import LoraConfig
from llmtune.config.schema import HardwareConfig
from llmtune.kernels import apply_kernels
from llmtune.kernels.dropout import CpuDotProductAttention, CpuDropout
from llmtune.models import build_model
from llmtune.models.blocks import DotProductAttention
from llmtune.models.registry import model_config
from llmtune.train.hardware import prepare_model

CPU = torch.device("cpu")
TINY = dict(vocab_size=100, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=16)
HEADS = {"gpt": ("lm",), "llama": ("lm",), "bert": ("mlm",), "t5": ("lm",)}
EXTRA = {"gpt": {}, "llama": {"n_kv_heads": 2}, "bert": {}, "t5": {"d_kv": 8}}


def _model(family: str) -> nn.Module:
    torch.manual_seed(0)
    config = model_config(family, **TINY, **EXTRA[family], dropout=0.2, attn_dropout=0.2)
    return build_model(config, HEADS[family])


def _hidden(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    if model.config.family == "t5":
        return model.backbone(ids, decoder_input_ids=ids[:, :6])
    return model.backbone(ids)


def _plain_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if type(m) in (nn.Dropout, DotProductAttention)]


@pytest.mark.parametrize("family", ["gpt", "llama", "bert", "t5"])
def test_every_plain_layer_becomes_its_kernel_and_the_function_stays(family):
    model = _model(family)
    plain = copy.deepcopy(model)
    keys = list(model.state_dict())
    n_plain = len(_plain_layers(model))
    assert n_plain >= 2 * TINY["n_layers"]  # dropout and attention in every block at least

    assert apply_kernels(model, CPU) == n_plain
    assert _plain_layers(model) == []
    kernels = [m for m in model.modules() if isinstance(m, CpuDropout | CpuDotProductAttention)]
    assert len(kernels) == n_plain and all(m.p == 0.2 for m in kernels)
    assert list(model.state_dict()) == keys  # old checkpoints load, new ones look the same
    assert apply_kernels(model, CPU) == 0  # applying twice changes nothing

    ids = torch.randint(0, 100, (2, 12))
    with torch.no_grad():
        assert torch.equal(_hidden(model.eval(), ids), _hidden(plain.eval(), ids))
        model.train(), plain.train()
        # training: the same seed, other masks (the kernels draw 16 bits per element)
        torch.manual_seed(1)
        ours = _hidden(model, ids)
        torch.manual_seed(1)
        assert not torch.equal(ours, _hidden(plain, ids))


def test_training_preparation_swaps_the_kernels_in_after_the_adapters():
    """prepare_model is where the Trainer readies a model: LoRA's dropout is swapped too."""
    model = _model("gpt")
    apply_method(model, LoraConfig(name="lora", rank=2, dropout=0.1), seed=0)
    lora_dropouts = [m.lora_dropout for m in model.modules() if hasattr(m, "lora_dropout")]
    assert lora_dropouts and all(type(m) is nn.Dropout for m in lora_dropouts)
    prepare_model(model, HardwareConfig())
    assert _plain_layers(model) == []
    lora_dropouts = [m.lora_dropout for m in model.modules() if hasattr(m, "lora_dropout")]
    assert all(type(m) is CpuDropout for m in lora_dropouts)


def test_nothing_is_swapped_for_a_gpu():
    model = _model("llama")
    assert apply_kernels(model, torch.device("cuda")) == 0
    assert len(_plain_layers(model)) > 0
