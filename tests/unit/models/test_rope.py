"""Rotary embeddings: each scaling variant's frequencies against transformers' rope init
functions, and whole-model logits with scaling (dynamic beyond the trained context)."""

import dataclasses

import pytest
import torch

from llmtune.models import from_hf_state_dict, hf_config_dict
from llmtune.models.rope import RopeScaling, inverse_frequencies, rotary_tables, rotate
from tests.unit.models.test_llama import TINY, build, hf_model, ids, perturb

transformers = pytest.importorskip("transformers")
rope_utils = pytest.importorskip("transformers.modeling_rope_utils")

SCALINGS = {
    "linear": RopeScaling("linear", 4.0),
    "dynamic": RopeScaling("dynamic", 2.0),
    "llama3": RopeScaling("llama3", 8.0, 1.0, 4.0, 16),
}
HEAD_DIM, THETA, N_POSITIONS = 16, 500.0, 24


def _hf_config(scaling: RopeScaling):
    config = dataclasses.replace(
        TINY, head_dim=HEAD_DIM, rope_theta=THETA, n_positions=N_POSITIONS, rope_scaling=scaling
    )
    body = hf_config_dict(config)
    body.pop("architectures")
    return transformers.AutoConfig.for_model(**body)


@pytest.mark.parametrize("name", SCALINGS)
@pytest.mark.parametrize("seq_len", [10, 60])
def test_frequencies_equal_transformers(name, seq_len):
    scaling = SCALINGS[name]
    init = rope_utils.ROPE_INIT_FUNCTIONS[name]
    theirs, attention_factor = init(_hf_config(scaling), "cpu", seq_len=seq_len)
    ours = inverse_frequencies(HEAD_DIM, THETA, scaling, N_POSITIONS, seq_len)
    assert attention_factor == 1.0
    torch.testing.assert_close(ours, theirs, atol=0, rtol=1e-6)


def test_scalings_change_the_frequencies_they_should():
    plain = inverse_frequencies(HEAD_DIM, THETA, RopeScaling(), N_POSITIONS, 10)
    torch.testing.assert_close(
        inverse_frequencies(HEAD_DIM, THETA, SCALINGS["linear"], 0, 0), plain / 4
    )
    # dynamic acts only beyond the trained context
    assert torch.equal(
        inverse_frequencies(HEAD_DIM, THETA, SCALINGS["dynamic"], N_POSITIONS, 24), plain
    )
    assert not torch.equal(
        inverse_frequencies(HEAD_DIM, THETA, SCALINGS["dynamic"], N_POSITIONS, 25), plain
    )
    llama3 = inverse_frequencies(HEAD_DIM, THETA, SCALINGS["llama3"], N_POSITIONS, 10)
    assert llama3[-1] == plain[-1] / 8  # the slowest rotation is slowed by the whole factor
    assert bool(((llama3 <= plain) & (llama3 >= plain / 8)).all())


def test_rotation_preserves_norm_and_relative_angle():
    """q.k after rotation depends only on the distance between the two positions."""
    inv_freq = inverse_frequencies(HEAD_DIM, THETA, RopeScaling(), N_POSITIONS, 0)
    cos, sin = rotary_tables(inv_freq, torch.arange(12).unsqueeze(0))
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, HEAD_DIM), torch.randn(1, 1, 1, HEAD_DIM)
    qs, ks = rotate(q.expand(1, 1, 12, -1), cos, sin), rotate(k.expand(1, 1, 12, -1), cos, sin)
    torch.testing.assert_close(qs.norm(dim=-1), q.norm(dim=-1).expand(1, 1, 12))
    dots = (qs[0, 0, 3:] * ks[0, 0, :-3]).sum(-1)  # every pair 3 positions apart
    torch.testing.assert_close(dots, dots[:1].expand_as(dots), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", SCALINGS)
def test_scaled_model_logits_equal_transformers(name):
    """30 tokens > n_positions 24, so dynamic scaling is active."""
    config = dataclasses.replace(TINY, n_positions=N_POSITIONS, rope_scaling=SCALINGS[name])
    hf = hf_model(config)
    perturb(hf)
    model = build(config)
    model.load_state_dict(from_hf_state_dict(hf.state_dict(), config, ("lm",)))
    x = ids(30)
    with torch.no_grad():
        torch.testing.assert_close(model.heads["lm"](model(x)), hf(x).logits, atol=1e-5, rtol=1e-5)
