"""`llmtune plan`'s activation memory for an encoder-decoder (T5): a hand count of one shape,
and the estimate against the tensors autograd really saves."""

from __future__ import annotations

import pytest
import torch

from llmtune.config.schema import HardwareConfig
from llmtune.models import build_model
from llmtune.models.registry import model_config
from llmtune.train.hardware import prepare_model
from llmtune.train.memory import ActivationShape, activation_bytes

from .test_plan import _saved_bytes

# 2 encoder + 3 decoder blocks; every width differs so a term counted at the wrong width shows
SHAPE = dict(vocab_size=500, d_model=48, n_layers=2, n_decoder_layers=3, n_heads=3, d_kv=20)
B, S, T = 2, 40, 10  # batch, encoder (source) and decoder (target) positions


def _t5(**keys):
    return model_config("t5", **SHAPE, d_ff=80, max_seq_len=S, **keys)


def test_encoder_decoder_activations_match_a_hand_count():
    """fp32, no dropout, gated-GELU: the tensors one counts in each block (as autograd keeps
    them), with the decoder at T = 10 targets and cross-attention over the S = 40 sources."""
    cfg = _t5(dropout=0.0, attn_dropout=0.0)
    d, inner, ff, h = 48, 60, 80, 3
    norm = 3 * d + 1  # input, x/rms, output (the next matmul's input), 1/rms
    encoder_block = B * S * (2 * norm + 4 * inner + 4 * ff) + B * h * S * S  # q, k^T, v, proj in
    self_attn = B * T * (3 * norm + 4 * inner + 4 * ff) + B * h * T * T
    cross = B * T * (3 * inner + h) + B * S * 2 * inner  # q, out, proj in, log-sum-exp; k, v
    final_norms = B * S * norm + B * T * (2 * d + 1)  # the decoder's output goes to the head
    floats = 2 * encoder_block + 3 * (self_attn + cross) + final_norms
    int64_and_bool = 8 * (S * S + T * T) + T * T  # position buckets, the causal mask
    shape = ActivationShape(batch=B, seq_len=S, half=False, flash=True, lm_rows_share=T / S)
    assert activation_bytes(cfg, shape) == 4 * floats + int64_and_bool


@pytest.mark.parametrize("feed_forward", ["gated-gelu", "relu"])
@pytest.mark.parametrize(("dropout", "attn_dropout"), [(0.0, 0.0), (0.1, 0.0), (0.1, 0.1)])
def test_encoder_decoder_estimate_matches_saved_tensors(feed_forward, dropout, attn_dropout):
    torch.manual_seed(0)
    cfg = _t5(feed_forward=feed_forward, dropout=dropout, attn_dropout=attn_dropout)
    model = prepare_model(build_model(cfg, ("lm",)), HardwareConfig())  # as training runs it
    ids, targets = torch.randint(500, (B, S)), torch.randint(500, (B, T))
    measured = _saved_bytes(model, lambda: model.backbone(ids, None, targets))
    shape = ActivationShape(batch=B, seq_len=S, half=False, flash=True, lm_rows_share=T / S)
    assert 0.97 < activation_bytes(cfg, shape) / measured < 1.03


def test_decoder_activations_grow_with_the_target_share():
    """Span corruption's short targets cost less than denoising's full-length ones."""
    cfg = _t5()
    short, full = (
        activation_bytes(cfg, ActivationShape(B, S, False, True, lm_rows_share=share))
        for share in (0.25, 1.0)
    )
    assert short < full
