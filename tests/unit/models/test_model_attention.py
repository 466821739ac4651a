"""Attention masking: GPT is causal and respects packed documents; BERT is bidirectional."""

import torch

from llmtune.models import build_model
from llmtune.models.blocks import Attention
from llmtune.models.registry import model_config

TINY = dict(
    vocab_size=100, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=16, n_positions=32
)


def _model(family: str, heads: list[str]):
    torch.manual_seed(0)
    eps = 1e-5 if family == "gpt" else 1e-12
    return build_model(model_config(family, **TINY, layer_norm_eps=eps), heads).eval()


def test_gpt_is_causal():
    model = _model("gpt", ["lm"])
    ids = torch.randint(0, 100, (2, 12))
    changed = ids.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % 100
    a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_bert_is_bidirectional():
    model = _model("bert", ["mlm"])
    ids = torch.randint(0, 100, (2, 12))
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 100
    assert not torch.allclose(model(ids)[:, 0], model(changed)[:, 0])


def test_packed_documents_match_running_alone():
    model = _model("gpt", ["lm"])
    first, second = torch.randint(0, 100, (1, 5)), torch.randint(0, 100, (1, 7))
    packed = torch.cat([first, second], dim=1)
    doc_ids = torch.tensor([[0] * 5 + [1] * 7])
    hidden = model(packed, doc_ids=doc_ids)
    torch.testing.assert_close(hidden[:, 5:], model(second), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hidden[:, :5], model(first), atol=1e-5, rtol=1e-5)


def test_single_document_doc_ids_equal_causal_fast_path():
    model = _model("gpt", ["lm"])
    ids = torch.randint(0, 100, (2, 9))
    masked = model(ids, doc_ids=torch.zeros_like(ids))
    torch.testing.assert_close(masked, model(ids), atol=1e-5, rtol=1e-5)


def test_bert_padding_does_not_change_real_tokens():
    model = _model("bert", ["mlm"])
    ids = torch.randint(1, 100, (2, 8))
    padded = torch.cat([ids, torch.zeros(2, 4, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(2, 8), torch.zeros(2, 4)], dim=1).long()
    types = torch.zeros_like(padded)
    out = model(padded, token_type_ids=types, attention_mask=mask)
    torch.testing.assert_close(out[:, :8], model(ids), atol=1e-5, rtol=1e-5)
    # without the mask the padding is attended to: the check above is not vacuous
    assert not torch.allclose(model(padded)[:, :8], model(ids), atol=1e-4)


def test_token_type_ids_change_the_output():
    model = _model("bert", ["mlm"])
    ids = torch.randint(0, 100, (1, 6))
    types = torch.tensor([[0, 0, 0, 1, 1, 1]])
    assert not torch.allclose(model(ids), model(ids, token_type_ids=types))
    torch.testing.assert_close(model(ids), model(ids, token_type_ids=torch.zeros_like(ids)))


def test_attention_keeping_fewer_heads_equals_the_full_one_without_them():
    """blocks.Attention(n_heads=2) of a 4-head config: what the full attention computes when
    the output projection ignores heads 2 and 3 (the layout head pruning relies on)."""
    torch.manual_seed(0)
    config = model_config("gpt", **TINY, attn_dropout=0.0)
    full, kept = Attention(config).eval(), Attention(config, n_heads=2).eval()
    assert (kept.n_heads, kept.n_kv_heads, kept.head_size) == (2, 2, 8)
    with torch.no_grad():
        q, k, v = full.qkv.weight.split(32)  # [H*hs, D] each, head-major rows
        kept.qkv.weight.copy_(torch.cat([q[:16], k[:16], v[:16]]))
        kept.qkv.bias.copy_(torch.cat([b[:16] for b in full.qkv.bias.split(32)]))
        kept.proj.weight.copy_(full.proj.weight[:, :16])
        kept.proj.bias.copy_(full.proj.bias)
        full.proj.weight[:, 16:] = 0
        x = torch.randn(2, 5, 32)
        torch.testing.assert_close(kept(x, is_causal=True), full(x, is_causal=True))
