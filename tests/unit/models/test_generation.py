"""Generation: the KV cache changes nothing, sampling filters behave, EOS and context stop."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from llmtune.config.schema import EvaluateConfig
from llmtune.models import build_model
from llmtune.models.generation import Generation, filter_logits, generate, next_token
from llmtune.models.gpt import GPTConfig

TINY = GPTConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, d_ff=64,
    max_seq_len=48, n_positions=64, layer_norm_eps=1e-5,
)  # fmt: skip


def generate_one(model, prompt, cfg, eos_id, generator=None, use_cache=True) -> Generation:
    return generate(model, [prompt], cfg, eos_id, generator, use_cache)[0]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(TINY, ["lm"]).eval()


def test_cached_forward_equals_full_forward(model):
    ids = torch.randint(0, 50, (2, 10))
    full = model(ids)
    first, cache = model(ids[:, :6], past=None, use_cache=True)
    rest = []
    for t in range(6, 10):  # one token at a time, as decoding does
        hidden, cache = model(ids[:, t : t + 1], past=cache, use_cache=True)
        rest.append(hidden)
    torch.testing.assert_close(torch.cat([first, *rest], dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache[0][0].shape == (2, 4, 10, 8)  # [B,H,positions,D/H] per layer


def test_cache_with_several_new_tokens_keeps_causality(model):
    ids = torch.randint(0, 50, (1, 9))
    _, cache = model(ids[:, :4], use_cache=True)
    hidden = model(ids[:, 4:], past=cache)
    torch.testing.assert_close(hidden, model(ids)[:, 4:], atol=1e-5, rtol=1e-5)


def test_attention_past_with_explicit_mask_sees_past_keys(model):
    attn = model.backbone.blocks[0].attn
    x = torch.randn(1, 5, 32)
    _, past = attn(x[:, :2], is_causal=True, use_cache=True)
    everything = torch.ones(1, 1, 3, 3, dtype=torch.bool)
    with_mask = attn(x[:, 2:], mask=everything, past=past)
    bidirectional = attn(x)[:, 2:]  # no mask: every key visible
    torch.testing.assert_close(with_mask, bidirectional, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prompt_len", [1, 7])
def test_cached_greedy_equals_uncached_token_for_token(model, prompt_len):
    cfg = EvaluateConfig(max_new_tokens=20, stop_at_eos=False)
    prompt = torch.randint(0, 50, (prompt_len,)).tolist()
    cached = generate_one(model, prompt, cfg, eos_id=None, use_cache=True)
    plain = generate_one(model, prompt, cfg, eos_id=None, use_cache=False)
    assert cached.token_ids == plain.token_ids and len(cached.token_ids) == 20


def test_cached_sampling_equals_uncached_with_same_seed(model):
    cfg = EvaluateConfig(max_new_tokens=15, temperature=0.9, top_k=10, top_p=0.9)
    runs = [
        generate_one(model, [1, 2, 3], cfg, None, torch.Generator().manual_seed(7), use_cache=c)
        for c in (True, False)
    ]
    assert runs[0].token_ids == runs[1].token_ids


def test_top_k_one_and_tiny_top_p_equal_greedy(model):
    greedy = generate_one(model, [4, 5], EvaluateConfig(max_new_tokens=12), None).token_ids
    for extra in ({"top_k": 1}, {"top_p": 1e-6}):
        cfg = EvaluateConfig(max_new_tokens=12, temperature=1.5, **extra)
        sampled = generate_one(model, [4, 5], cfg, None, torch.Generator().manual_seed(0))
        assert sampled.token_ids == greedy


def test_filter_logits_keeps_top_k_and_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = filter_logits(logits, top_k=2).isfinite()
    assert kept.tolist() == [[True, True, False, False]]
    # 0.5 < 0.7, 0.5 + 0.3 >= 0.7: the nucleus is the first two
    assert filter_logits(logits, top_p=0.7).isfinite().tolist() == [[True, True, False, False]]
    assert filter_logits(logits, top_p=0.5).isfinite().tolist() == [[True, False, False, False]]
    assert filter_logits(logits[:, [3, 0, 2, 1]], top_p=0.7).isfinite().tolist() == [
        [False, True, False, True]
    ]


def test_sampling_only_draws_allowed_tokens():
    logits = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]]).repeat(200, 1)
    cfg = EvaluateConfig(temperature=1.0, top_k=3)
    drawn = next_token(logits, cfg, [torch.Generator().manual_seed(i) for i in range(200)])
    assert set(drawn.tolist()) == {0, 1, 2}


def test_stops_at_eos(model):
    cfg = EvaluateConfig(max_new_tokens=20, stop_at_eos=False)
    tokens = generate_one(model, [3], cfg, eos_id=None).token_ids
    eos = tokens[4]
    first = tokens.index(eos)
    out = generate_one(model, [3], dataclasses.replace(cfg, stop_at_eos=True), eos_id=eos)
    assert out.stop_reason == "eos" and out.token_ids == tokens[: first + 1]


def test_stops_when_the_context_is_full(model):
    cfg = EvaluateConfig(max_new_tokens=100)
    out = generate_one(model, list(range(40)), cfg, eos_id=None)
    assert out.stop_reason == "context"
    assert out.prompt_tokens + len(out.token_ids) == TINY.max_seq_len + 1
    long_prompt = generate_one(model, list(range(50)) * 2, EvaluateConfig(max_new_tokens=3), None)
    assert long_prompt.prompt_tokens == TINY.max_seq_len
