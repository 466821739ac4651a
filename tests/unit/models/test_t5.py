"""T5: logits equal transformers' T5ForConditionalGeneration (v1.0 and v1.1) both ways, the
decoder cache equals full recomputation, and the HF key map refuses what it cannot place."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from llmtune.adapters.lora import apply_lora
from llmtune.errors import CheckpointError, ConfigError
from llmtune.models import (
    build_model,
    from_hf_state_dict,
    hf_config_dict,
    model_config_from_hf,
    to_hf_state_dict,
)
from llmtune.models.t5 import t5_training_flops
from llmtune.models.t5_layers import T5Config, relative_position_bucket

transformers = pytest.importorskip("transformers")

# small buckets and max distance so 30-token inputs reach the logarithmic buckets
BASE = T5Config(
    vocab_size=99,
    d_model=32,
    n_layers=2,
    n_decoder_layers=3,
    n_heads=4,
    d_kv=6,  # n_heads * d_kv != d_model, as T5 allows
    d_ff=37,
    dropout=0.0,
    attn_dropout=0.0,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=20,
)
V10 = dataclasses.replace(BASE, feed_forward="relu", tie_embeddings=True)
V11 = dataclasses.replace(BASE, feed_forward="gated-gelu", tie_embeddings=False)
ATOL = 1e-5


def build_t5_model(config: T5Config, heads=("lm",)):
    return build_model(config, heads)


def hf_config_from_t5(config: T5Config) -> dict:
    return hf_config_dict(config, ("lm",))


def _ours(config: T5Config, seed: int = 0):
    torch.manual_seed(seed)
    model = build_t5_model(config).eval()
    with torch.no_grad():  # norms away from 1, so a dropped or swapped norm changes logits
        for name, p in model.named_parameters():
            if "ln_" in name:
                p.add_(torch.randn_like(p) * 0.2)
    return model


def hf_twin(model, config: T5Config):
    """A transformers T5ForConditionalGeneration holding `model`'s weights."""
    hf = transformers.T5ForConditionalGeneration(
        transformers.T5Config(**hf_config_from_t5(config))
    ).eval()
    if not config.tie_embeddings:  # transformers >= 5 builds the head tied; untie it first
        hf.lm_head.weight = torch.nn.Parameter(torch.empty(config.vocab_size, config.d_model))
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(model, include_tied=False), False)
    assert not unexpected
    assert set(missing) <= {
        "encoder.embed_tokens.weight",
        "decoder.embed_tokens.weight",
        "lm_head.weight",
    }
    return hf


def _batch():
    torch.manual_seed(3)
    ids = torch.randint(2, 99, (3, 30))
    mask = torch.ones_like(ids)
    mask[1, 21:] = 0
    mask[2, 4:] = 0
    return ids, mask, torch.randint(2, 99, (3, 26))


def _logits(model, ids, mask, dec):
    return model.heads["lm"](model(ids, attention_mask=mask, decoder_input_ids=dec))


@pytest.mark.parametrize("config", [V10, V11], ids=["v1.0", "v1.1"])
def test_logits_match_transformers_on_a_padded_batch(config):
    model = _ours(config)
    hf = hf_twin(model, config)
    ids, mask, dec = _batch()
    with torch.no_grad():
        ours = _logits(model, ids, mask, dec)
        theirs = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    real = mask.bool()
    assert ours.shape == theirs.shape == (3, 26, 99)
    assert (ours - theirs).abs().max() < ATOL
    # padding must matter: the same row unpadded gives other logits
    with torch.no_grad():
        unmasked = _logits(model, ids, torch.ones_like(mask), dec)
    assert (unmasked[2] - ours[2]).abs().max() > 1e-3
    assert real.sum() < real.numel()


@pytest.mark.parametrize("config", [V10, V11], ids=["v1.0", "v1.1"])
def test_import_from_a_transformers_folder(config, tmp_path):
    """A random T5 saved by transformers (config.json + model.safetensors) imports exactly."""
    torch.manual_seed(5)
    hf = transformers.T5ForConditionalGeneration(
        transformers.T5Config(**hf_config_from_t5(config))
    ).eval()
    if not config.tie_embeddings:
        hf.lm_head.weight = torch.nn.Parameter(torch.randn(config.vocab_size, config.d_model))
        hf.config.tie_word_embeddings = False
    hf.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    hf_dict = json.loads((tmp_path / "config.json").read_text())
    imported = model_config_from_hf(hf_dict)
    assert imported == dataclasses.replace(config, max_seq_len=imported.max_seq_len)
    model = build_t5_model(imported).eval()
    state = from_hf_state_dict(load_file(tmp_path / "model.safetensors"), imported, ("lm",))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and not missing
    reloaded = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    ids, mask, dec = _batch()
    with torch.no_grad():
        ours = _logits(model, ids, mask, dec)
        theirs = reloaded(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    assert (ours - theirs).abs().max() < ATOL


@pytest.mark.parametrize("config", [V10, V11], ids=["v1.0", "v1.1"])
def test_state_dict_round_trip_is_exact(config):
    model = _ours(config)
    ours = model.state_dict()
    back = from_hf_state_dict(to_hf_state_dict(model, include_tied=False), config, ("lm",))
    assert set(back) == set(ours)
    assert all(torch.equal(back[k], ours[k]) for k in back)
    assert model_config_from_hf(hf_config_from_t5(config)) == config


def test_transformers_5_scale_flag_decides_the_tied_head():
    d = hf_config_from_t5(V11)
    d.update(tie_word_embeddings=True, scale_decoder_outputs=False)  # what transformers 5 writes
    assert model_config_from_hf(d).tie_embeddings is False
    d.pop("scale_decoder_outputs")
    assert model_config_from_hf(d).tie_embeddings is True


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_position_buckets_match_transformers(bidirectional):
    relative = torch.arange(-300, 300)[None, :]
    for buckets, distance in ((32, 128), (8, 20)):
        ours = relative_position_bucket(relative, bidirectional, buckets, distance)
        theirs = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
            relative, bidirectional, buckets, distance
        )
        assert torch.equal(ours, theirs)
        assert ours.min() == 0 and ours.max() == buckets - 1


@pytest.mark.parametrize("config", [V10, V11], ids=["v1.0", "v1.1"])
def test_cached_decoding_equals_full_recomputation(config):
    model = _ours(config)
    ids, mask, dec = _batch()
    backbone = model.backbone
    with torch.no_grad():
        memory = backbone.encode(ids, mask)
        full = backbone.decode(dec, backbone.start_cache(memory))
        cache = backbone.start_cache(memory)
        steps = [backbone.decode(dec[:, :5], cache)]  # a prefix of 5, then one at a time
        steps += [backbone.decode(dec[:, t : t + 1], cache) for t in range(5, dec.shape[1])]
    assert cache.length == dec.shape[1]
    assert (torch.cat(steps, dim=1) - full).abs().max() < ATOL


def test_first_loss_is_near_uniform_and_every_weight_learns():
    """T5's fan-in init starts at about ln V; with dropout on (the CPU dropout path with the
    float position bias) every parameter, both position tables included, gets a gradient."""
    for config in (V10, V11):
        noisy = dataclasses.replace(config, dropout=0.1, attn_dropout=0.1, vocab_size=500)
        model = build_t5_model(noisy).train()
        ids = torch.randint(2, 500, (4, 24))
        dec = torch.randint(2, 500, (4, 12))
        logits = _logits(model, ids, torch.ones_like(ids), dec)
        targets = torch.randint(2, 500, (4, 12))  # unrelated to the inputs: nothing to copy
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        assert abs(loss.item() - math.log(500)) < 1.0
        loss.backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_lora_targets_name_t5_linears():
    model = _ours(V11)
    replaced = apply_lora(model, 4, 8.0, 0.0, ["qkv", "kv", "attn.proj"])
    assert "backbone.encoder.blocks.0.attn.qkv" in replaced
    assert "backbone.decoder.blocks.2.cross_attn.kv" in replaced
    assert "backbone.decoder.blocks.1.attn.proj" in replaced
    assert "backbone.decoder.blocks.1.cross_attn.proj" not in replaced  # that is cross_attn.proj
    assert not any("mlp" in name for name in replaced)


def test_bad_configs_and_weights_are_one_line_errors():
    with pytest.raises(ConfigError, match="feed_forward"):
        build_t5_model(dataclasses.replace(V11, feed_forward="swiglu"))
    with pytest.raises(ConfigError, match="vocab_size"):
        build_t5_model(dataclasses.replace(V11, vocab_size=0))
    with pytest.raises(ConfigError, match="head 'mlm'"):
        build_t5_model(V11, heads=("mlm",))
    with pytest.raises(CheckpointError, match="feed_forward_proj"):
        model_config_from_hf({**hf_config_from_t5(V11), "feed_forward_proj": "gated-silu"})
    with pytest.raises(CheckpointError, match="num_heads"):
        model_config_from_hf({k: v for k, v in hf_config_from_t5(V11).items() if k != "num_heads"})
    hf = to_hf_state_dict(_ours(V10), include_tied=False)
    wo = "encoder.block.1.layer.1.DenseReluDense.wo.weight"
    with pytest.raises(CheckpointError, match=f"missing \\['{wo}'\\]"):
        from_hf_state_dict({k: v for k, v in hf.items() if k != wo}, V10, ("lm",))
    extra = "encoder.block.7.layer.0.layer_norm.weight"
    with pytest.raises(CheckpointError, match=f"unexpected \\['{extra}'\\]"):
        from_hf_state_dict({**hf, extra: torch.ones(32)}, V10, ("lm",))
    with pytest.raises(CheckpointError, match="shared.weight"):
        from_hf_state_dict({k: v for k, v in hf.items() if k != "shared.weight"}, V10, ("lm",))


def test_training_flops_count_every_matmul_weight_where_it_runs():
    model = _ours(V11)
    linears = {
        n: m.weight.numel() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
    }
    at_source = sum(v for n, v in linears.items() if ".encoder." in n or "cross_attn.kv" in n)
    at_target = sum(v for n, v in linears.items() if ".decoder." in n and "cross_attn.kv" not in n)
    s, t, inner = 30, 10, V11.n_heads * V11.d_kv
    attention = 12 * inner * (2 * s * s + 3 * (t * t + t * s))
    head = 6 * model.heads["lm"].weight.numel() * t
    expected = 6 * (at_source * s + at_target * t) + attention + head
    assert t5_training_flops(V11, s, t) == expected
