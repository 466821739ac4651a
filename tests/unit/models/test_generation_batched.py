"""Batched generation: left-padded rows give exactly what each prompt gives alone (greedy and
sampled), cached equals uncached, rows stop on their own and leave the batch when they do."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from llmtune.adapters import METHODS, apply_method
from llmtune.config.schema import EvaluateConfig
from llmtune.models import build_model
from llmtune.models.blocks import GrowingKV
from llmtune.models.generation import generate
from llmtune.models.gpt import GPTConfig

TINY = GPTConfig(
    vocab_size=50, d_model=32, n_layers=2, n_heads=4, d_ff=64,
    max_seq_len=48, n_positions=64, layer_norm_eps=1e-5,
)  # fmt: skip
# very different lengths: 1 token, a few, most of the context
LENGTHS = (1, 3, 17, 2, 40, 9)


def _sharp(model: torch.nn.Module) -> torch.nn.Module:
    """Weights drawn wider than the 0.02 init: decisive logits, so a rounding difference of
    the padded batch (1e-6) cannot flip an argmax between two near-equal tokens."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(std=0.3)
    return model.eval()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return _sharp(build_model(TINY, ["lm"]))


@pytest.fixture(scope="module")
def prompts():
    g = torch.Generator().manual_seed(3)
    return [torch.randint(0, 50, (n,), generator=g).tolist() for n in LENGTHS]


def _alone(model, prompts, cfg, eos_id=None, seed=None, use_cache=True):
    out = []
    for i, p in enumerate(prompts):
        # a prompt alone draws its row seed first from the same stream: advance past i draws
        g = None if seed is None else torch.Generator().manual_seed(seed)
        if g is not None:
            torch.randint(2**62, (i,), generator=g)
        one = dataclasses.replace(cfg, batch_size=1)
        out.append(generate(model, [p], one, eos_id, g, use_cache)[0])
    return out


def _batched(model, prompts, cfg, eos_id=None, seed=None, use_cache=True):
    g = None if seed is None else torch.Generator().manual_seed(seed)
    return generate(model, prompts, cfg, eos_id, g, use_cache)


def test_padded_forward_equals_each_row_alone(model, prompts):
    rows = [prompts[0], prompts[2], prompts[4]]
    width = max(len(r) for r in rows)
    ids = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :], mask[i, width - len(r) :] = torch.tensor(r), True
    with torch.no_grad():
        hidden, cache = model(ids, past=None, use_cache=True, attention_mask=mask)
        step = torch.tensor([[5], [6], [7]])
        mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.bool)], 1)
        after, _ = model(step, past=cache, use_cache=True, attention_mask=mask)
        for i, r in enumerate(rows):
            alone = model(torch.tensor([r + [5 + i]]))
            close = dict(atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(hidden[i, width - len(r) :], alone[0, :-1], **close)
            torch.testing.assert_close(after[i, 0], alone[0, -1], **close)


def test_growing_cache_equals_concatenated_cache(model):
    ids = torch.randint(0, 50, (3, 12), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        _, tuples = model(ids[:, :5], use_cache=True)
        growing = [GrowingKV(layer, capacity=12) for layer in tuples]
        for t in range(5, 12):
            a, tuples = model(ids[:, t : t + 1], past=tuples, use_cache=True)
            b, growing = model(ids[:, t : t + 1], past=growing, use_cache=True)
            torch.testing.assert_close(a, b)
        assert all(isinstance(layer, GrowingKV) and layer.length == 12 for layer in growing)
        torch.testing.assert_close(growing[1][0], tuples[1][0])
        kept = growing[0].select(torch.tensor([2, 0]))
        torch.testing.assert_close(kept[1], tuples[0][1][[2, 0]])
        with pytest.raises(ValueError, match="cache full"):
            model(ids[:, :1], past=growing, use_cache=True)


@pytest.mark.parametrize("batch_size", [2, 4, 16])
def test_batched_greedy_equals_one_at_a_time(model, prompts, batch_size):
    cfg = EvaluateConfig(max_new_tokens=12, stop_at_eos=False, batch_size=batch_size)
    batched = _batched(model, prompts, cfg)
    alone = _alone(model, prompts, cfg)
    assert [b.token_ids for b in batched] == [a.token_ids for a in alone]
    assert [b.prompt_tokens for b in batched] == list(LENGTHS)
    # the 40-token prompt reaches max_seq_len (48) first
    assert [len(b.token_ids) for b in batched] == [min(12, 49 - n) for n in LENGTHS]


def test_batched_cached_equals_uncached(model, prompts):
    cfg = EvaluateConfig(max_new_tokens=10, stop_at_eos=False, batch_size=6)
    cached = _batched(model, prompts, cfg)
    plain = _batched(model, prompts, cfg, use_cache=False)
    assert [c.token_ids for c in cached] == [p.token_ids for p in plain]


def test_rows_stop_at_eos_on_their_own(model, prompts):
    cfg = EvaluateConfig(max_new_tokens=14, stop_at_eos=False, batch_size=6)
    free = _batched(model, prompts, cfg)
    # the token some row produces mid-way: rows containing it stop there, the others go on
    eos = free[1].token_ids[3]
    stopped = _batched(model, prompts, dataclasses.replace(cfg, stop_at_eos=True), eos_id=eos)
    assert any(eos not in f.token_ids for f in free)  # some row never meets it
    for f, s in zip(free, stopped):
        if eos in f.token_ids:
            first = f.token_ids.index(eos)
            assert s.stop_reason == "eos" and s.token_ids == f.token_ids[: first + 1]
        else:
            assert s.stop_reason == "max_new_tokens" and s.token_ids == f.token_ids


def test_finished_rows_leave_the_batch(model, prompts):
    cfg = EvaluateConfig(max_new_tokens=14, stop_at_eos=False, batch_size=6)
    eos = _batched(model, prompts, cfg)[1].token_ids[3]
    rows_seen: list[int] = []
    hook = model.backbone.register_forward_pre_hook(lambda m, a: rows_seen.append(a[0].shape[0]))
    try:
        out = _batched(model, prompts, dataclasses.replace(cfg, stop_at_eos=True), eos_id=eos)
    finally:
        hook.remove()
    # every step runs exactly the rows still generating
    still = [sum(len(o.token_ids) > step for o in out) for step in range(len(rows_seen))]
    assert rows_seen == still and rows_seen[-1] < rows_seen[0]


def test_context_limit_per_row(model):
    cfg = EvaluateConfig(max_new_tokens=30, stop_at_eos=False, batch_size=4)
    out = _batched(model, [list(range(40)), [1, 2], list(range(45)), [9] * 30], cfg)
    assert [o.stop_reason for o in out] == ["context", "max_new_tokens", "context", "context"]
    assert [o.prompt_tokens + len(o.token_ids) for o in out] == [49, 32, 49, 49]


@pytest.mark.parametrize("top", [{"top_k": 8}, {"top_p": 0.8}, {}])
def test_sampling_is_reproducible_and_independent_of_the_batch(model, prompts, top):
    cfg = EvaluateConfig(max_new_tokens=12, temperature=1.3, stop_at_eos=False, batch_size=4, **top)
    first = _batched(model, prompts, cfg, seed=11)
    again = _batched(model, prompts, cfg, seed=11)
    assert [f.token_ids for f in first] == [r.token_ids for r in again]
    alone = _alone(model, prompts, cfg, seed=11)
    assert [f.token_ids for f in first] == [a.token_ids for a in alone]
    other = _batched(model, prompts, cfg, seed=12)
    assert [f.token_ids for f in first] != [o.token_ids for o in other]


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_prefix_and_prompt_adapters_generate_batched(method, prompts):
    torch.manual_seed(0)
    model = _sharp(build_model(TINY, ["lm"]))
    apply_method(model, METHODS[method].config(n_tokens=3))
    model.adapter.requires_grad_(False)
    with torch.no_grad():  # a learned prefix/prompt, not the near-zero init
        for p in model.adapter.parameters():
            p.normal_(std=0.5)
    cfg = EvaluateConfig(max_new_tokens=8, stop_at_eos=False, batch_size=6)
    batched = _batched(model, prompts[:4], cfg)
    assert [b.token_ids for b in batched] == [a.token_ids for a in _alone(model, prompts[:4], cfg)]
    plain = _batched(model, prompts[:4], cfg, use_cache=False)
    assert [b.token_ids for b in batched] == [p.token_ids for p in plain]


@pytest.mark.gpu
def test_cuda_batched_equals_one_at_a_time(prompts):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch.manual_seed(0)
    model = _sharp(build_model(TINY, ["lm"])).cuda()
    for temperature in (0.0, 1.3):  # greedy, and sampling with CPU generators
        cfg = EvaluateConfig(max_new_tokens=12, temperature=temperature, batch_size=6)
        batched = _batched(model, prompts, cfg, seed=2)
        alone = _alone(model, prompts, cfg, seed=2)
        assert [b.token_ids for b in batched] == [a.token_ids for a in alone]
