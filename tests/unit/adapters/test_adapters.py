"""Fine-tuning methods: LoRA starts at and merges to the base, freeze keeps weights bit-identical,
prefix/prompt act only through their own parameters, adapter checkpoints check their base."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from llmtune.adapters import METHODS, apply_method, merge_lora, parameter_summary
from llmtune.adapters.freeze import FreezeConfig
from llmtune.adapters.lora import LoraConfig
from llmtune.adapters.prefix import PrefixConfig
from llmtune.adapters.prompt import PromptConfig
from llmtune.config.schema import ModelConfig
from llmtune.errors import ConfigError
from llmtune.models import build_model
from tests.unit.train.test_accumulation import tiny_model

BERT = tiny_model(vocab_size=60, n_positions=40)
GPT = tiny_model("gpt", vocab_size=60, n_positions=40, layer_norm_eps=1e-5)


def _model(config: ModelConfig, head: str = "seq_cls"):
    torch.manual_seed(0)
    return build_model(config, [head], n_labels=3)


def _logits(model, ids):
    mask = torch.ones_like(ids)
    if model.config.family == "bert":
        hidden = model(ids, token_type_ids=torch.zeros_like(ids), attention_mask=mask)
        return model.heads["seq_cls"](model.pool(hidden))
    return model.heads["seq_cls"](model.pool(model(ids)))


def _ids(batch: int = 3, length: int = 10):
    return torch.randint(0, 60, (batch, length), generator=torch.Generator().manual_seed(1))


def _train_steps(model, steps: int = 3):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.5)
    for _ in range(steps):
        loss = _logits(model, _ids()).logsumexp(-1).sum() - _logits(model, _ids())[:, 0].sum()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("config", [BERT, GPT], ids=["bert", "gpt"])
def test_lora_starts_at_the_base_and_merges_exactly(config):
    base, model = _model(config).eval(), _model(config)
    apply_method(model, LoraConfig(rank=4, dropout=0.0, targets=("qkv", "fc")))
    model.eval()
    ids = _ids()
    with torch.no_grad():
        assert torch.equal(_logits(model, ids), _logits(base, ids))  # B = 0: exactly the base
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("heads.seq_cls") for n in trainable)
    model.train()
    _train_steps(model)
    model.eval()
    with torch.no_grad():
        trained = _logits(model, ids)
        assert not torch.allclose(trained, _logits(base, ids))
        assert merge_lora(model) == 2 * config.n_layers
        torch.testing.assert_close(_logits(model, ids), trained, atol=1e-5, rtol=1e-5)
    assert not any("lora_" in k for k in model.state_dict())  # plain base keys again


def test_lora_unknown_target_is_a_config_error():
    with pytest.raises(ConfigError, match="method.targets"):
        apply_method(_model(BERT), LoraConfig(dropout=0.0, targets=("query",)))


@pytest.mark.parametrize("layers", [1, -1])
def test_freeze_keeps_frozen_weights_bit_identical(layers):
    model = _model(BERT)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_method(model, FreezeConfig(freeze_layers=layers))
    _train_steps(model)
    for name, p in model.named_parameters():
        frozen = name.startswith(
            (
                "backbone.tok_emb",
                "backbone.pos_emb",
                "backbone.type_emb",
                "backbone.emb_ln",
                "backbone.blocks.0",
            )
        )
        if layers == -1:
            frozen = name.startswith("backbone.")
        assert p.requires_grad != frozen, name
        assert torch.equal(p, before[name]) == frozen, name


@pytest.mark.parametrize("config", [BERT, GPT], ids=["bert", "gpt"])
@pytest.mark.parametrize("method", ["prefix", "prompt", "prompt-mlp", "prompt-lstm"])
def test_prefix_and_prompt_change_outputs_only_through_their_parameters(config, method):
    name, _, encoder = method.partition("-")
    model = _model(config)
    frozen_before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    settings = {"prompt_encoder": encoder or "none"} if name == "prompt" else {}
    apply_method(model, METHODS[name].config(n_tokens=4, **settings))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.startswith(("adapter.", "heads.seq_cls")) for n in trainable), trainable
    model.eval()
    ids = _ids()
    with torch.no_grad():
        first = _logits(model, ids)
        assert first.shape == (3, 3)
        assert torch.equal(first, _logits(model, ids))  # hooks leave no state behind
    model.train()
    _train_steps(model)
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(_logits(model, ids), first)
    for n, p in model.backbone.named_parameters():
        assert torch.equal(p, frozen_before[n]), n
    assert "trainable" in parameter_summary(model)


def test_prefix_on_gpt_is_a_key_value_cache():
    """A GPT with a learned prefix computes what the backbone computes given that cache."""
    model = _model(GPT, "lm").eval()
    apply_method(model, PrefixConfig(n_tokens=3))
    ids = _ids()
    with torch.no_grad():
        hooked = model(ids)
        past = model.adapter(ids.shape[0])
        direct = model.backbone(ids, past=past)
        torch.testing.assert_close(hooked, direct)


def test_prompt_too_long_for_the_position_table():
    config = dataclasses.replace(BERT, max_seq_len=38)
    with pytest.raises(ConfigError, match="n_tokens"):
        apply_method(_model(config), PromptConfig(n_tokens=4))


def test_nothing_to_train_is_refused():
    model = build_model(GPT, ["lm"])
    with pytest.raises(ConfigError, match="no parameter to train"):
        apply_method(model, FreezeConfig(freeze_layers=-1))
