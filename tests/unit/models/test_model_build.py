"""build_model: heads, initialisation, tied weights, parameter counts."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from llmtune.errors import ConfigError
from llmtune.models import build_model
from llmtune.models.bert import BertConfig
from llmtune.models.gpt import GPTConfig

TINY = dict(
    vocab_size=100, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=16, n_positions=32
)
GPT = GPTConfig(**TINY, layer_norm_eps=1e-5)
BERT = BertConfig(**TINY)


@pytest.mark.parametrize(
    ("config", "heads", "match"),
    [
        (GPT, ["mlm"], "does not fit family 'gpt'"),
        (GPT, ["nsp"], "does not fit"),
        (BERT, ["lm"], "does not fit family 'bert'"),
        (BERT, ["mlm", "bogus"], "unknown head 'bogus'"),
        (BERT, ["seq_cls"], "n_labels"),
        (dataclasses.replace(GPT, family="t5"), ["lm"], "family"),
        (dataclasses.replace(GPT, vocab_size=0), ["lm"], "vocab_size"),
    ],
)
def test_build_refuses_bad_heads_and_configs(config, heads, match):
    with pytest.raises(ConfigError, match=match) as info:
        build_model(config, heads)
    assert "\n" not in str(info.value)


def test_init_std_and_layer_norms():
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(BERT, d_model=64, d_ff=256), ["mlm"])
    b = model.backbone
    for w in (b.tok_emb.weight, b.blocks[0].attn.qkv.weight, b.blocks[1].mlp.fc.weight):
        assert abs(w.std().item() - 0.02) < 0.002
    assert torch.all(b.blocks[0].attn.qkv.bias == 0)
    assert torch.all(b.emb_ln.weight == 1) and torch.all(b.emb_ln.bias == 0)
    assert torch.all(model.heads["mlm"].bias == 0)


def test_gpt_residual_projections_are_scaled():
    torch.manual_seed(0)
    config = dataclasses.replace(GPT, d_model=64, d_ff=256, n_layers=8)
    block = build_model(config, ["lm"]).backbone.blocks[3]
    expected = 0.02 / math.sqrt(2 * 8)
    for w in (block.attn.proj.weight, block.mlp.proj.weight):
        assert abs(w.std().item() - expected) < 0.15 * expected
    assert abs(block.mlp.fc.weight.std().item() - 0.02) < 0.002


def test_fresh_gpt_loss_is_ln_vocab():
    torch.manual_seed(0)
    config = dataclasses.replace(GPT, vocab_size=1000)
    model = build_model(config, ["lm"]).eval()
    ids = torch.randint(0, 1000, (4, 16))
    logits = model.heads["lm"](model(ids))
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, 1000), ids[:, 1:].reshape(-1))
    assert abs(loss.item() - math.log(1000)) < 0.1


@pytest.mark.parametrize(
    ("config", "head", "key"),
    [(GPT, "lm", "heads.lm.weight"), (BERT, "mlm", "heads.mlm.decoder.weight")],
)
def test_tied_weights(config, head, key):
    model = build_model(config, [head])
    module = model.heads[head]
    weight = module.weight if head == "lm" else module.decoder.weight
    assert weight is model.backbone.tok_emb.weight
    assert model.tied_parameter_names() == {key: "backbone.tok_emb.weight"}
    untied = build_model(dataclasses.replace(config, tie_embeddings=False), [head])
    assert untied.tied_parameter_names() == {}
    assert untied.num_parameters() == model.num_parameters() + 100 * 32


def test_num_parameters():
    model = build_model(GPT, ["lm"])
    embeddings = 100 * 32 + 32 * 32
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())
    assert model.num_parameters(exclude_embeddings=True) == model.num_parameters() - embeddings
    model.backbone.blocks[0].requires_grad_(False)
    frozen = sum(p.numel() for p in model.backbone.blocks[0].parameters())
    assert model.num_parameters(trainable_only=True) == model.num_parameters() - frozen


def test_heads_shapes():
    model = build_model(BERT, ["mlm", "nsp", "seq_cls", "token_cls"], n_labels=3).eval()
    ids = torch.randint(0, 100, (2, 7))
    hidden = model(ids)
    pooled = model.pool(hidden)
    assert model.heads["mlm"](hidden).shape == (2, 7, 100)
    assert model.heads["nsp"](pooled).shape == (2, 2)
    assert model.heads["seq_cls"](pooled).shape == (2, 3)
    assert model.heads["token_cls"](hidden).shape == (2, 7, 3)


def test_gpt_pool_takes_last_real_token():
    model = build_model(GPT, ["seq_cls"], n_labels=2).eval()
    hidden = model(torch.randint(0, 100, (2, 7)))
    pooled = model.pool(hidden, torch.tensor([3, 6]))
    torch.testing.assert_close(pooled, torch.stack([hidden[0, 3], hidden[1, 6]]))
    assert model.heads["seq_cls"](pooled).shape == (2, 2)
