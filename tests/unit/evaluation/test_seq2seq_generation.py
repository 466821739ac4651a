"""Encoder-decoder generation: greedy and beam search equal transformers' `generate`, the
cached decoder equals recomputation, sampling follows its seed."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from llmtune.errors import ConfigError
from llmtune.evaluation.seq2seq_generation import DecodeSettings, generate_seq2seq
from llmtune.models.t5 import build_t5_model
from tests.unit.models.test_t5 import V10, V11, hf_twin

transformers = pytest.importorskip("transformers")
START, EOS = 0, 1


def _model(config):
    # transformers 5.25's generate sizes its decoder cache by the encoder's layer count,
    # so the comparison uses as many decoder layers as encoder layers
    config = dataclasses.replace(config, vocab_size=60, n_decoder_layers=0)
    torch.manual_seed(0)
    model = build_t5_model(config).eval()
    with torch.no_grad():  # a sharper decoder: EOS gets chosen now and then
        for p in model.backbone.decoder.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        model.heads["lm"].weight[EOS] *= 3.0
    return model, config


def _inputs():
    torch.manual_seed(4)
    ids = torch.randint(2, 60, (6, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    mask[2, 3:] = 0
    return ids, mask


def _hf_rows(sequences: torch.Tensor) -> list[list[int]]:
    """transformers' output without the start token, cut after the first EOS."""
    rows = []
    for row in sequences.tolist():
        row = row[1:]
        rows.append(row[: row.index(EOS) + 1] if EOS in row else row)
    return rows


@pytest.mark.parametrize("config", [V10, V11], ids=["v1.0", "v1.1"])
def test_greedy_and_beam_search_equal_transformers_generate(config):
    model, config = _model(config)
    hf = hf_twin(model, config)
    ids, mask = _inputs()
    reasons = set()
    for beams, penalty in ((1, 1.0), (3, 1.0), (4, 0.5), (4, 2.0)):
        settings = DecodeSettings(max_new_tokens=12, num_beams=beams, length_penalty=penalty)
        ours = generate_seq2seq(model, ids, mask, settings, START, EOS)
        theirs = hf.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=12,
            num_beams=beams,
            length_penalty=penalty,
            do_sample=False,
            decoder_start_token_id=START,
            eos_token_id=EOS,
            pad_token_id=START,
        )
        assert [g.token_ids for g in ours] == _hf_rows(theirs), (beams, penalty)
        reasons |= {(beams > 1, g.stop_reason) for g in ours}
    # beam search finished hypotheses both ways: at EOS and at the length limit
    assert {(True, "eos"), (True, "max_new_tokens")} <= reasons


@pytest.mark.parametrize("beams", [1, 3])
def test_cached_generation_equals_recomputation(beams):
    model, _ = _model(V11)
    ids, mask = _inputs()
    settings = DecodeSettings(max_new_tokens=10, num_beams=beams)
    cached = generate_seq2seq(model, ids, mask, settings, START, EOS)
    full = generate_seq2seq(
        model, ids, mask, dataclasses.replace(settings, use_cache=False), START, EOS
    )
    assert [g.token_ids for g in cached] == [g.token_ids for g in full]


def test_sampling_follows_its_seed_and_top_k_1_is_greedy():
    model, _ = _model(V11)
    ids, mask = _inputs()
    sample = DecodeSettings(max_new_tokens=10, temperature=1.0)

    def run(seed: int, settings: DecodeSettings) -> list[list[int]]:
        gen = torch.Generator().manual_seed(seed)
        return [g.token_ids for g in generate_seq2seq(model, ids, mask, settings, START, EOS, gen)]

    assert run(1, sample) == run(1, sample)
    assert run(1, sample) != run(2, sample)
    greedy = run(0, DecodeSettings(max_new_tokens=10))
    assert run(5, dataclasses.replace(sample, top_k=1)) == greedy


def test_bad_settings_are_refused():
    model, _ = _model(V11)
    ids, mask = _inputs()
    with pytest.raises(ConfigError, match="temperature=0"):
        generate_seq2seq(model, ids, mask, DecodeSettings(num_beams=2, temperature=0.7), 0, 1)
    with pytest.raises(ConfigError, match="num_beams"):
        generate_seq2seq(model, ids, mask, DecodeSettings(num_beams=0), 0, 1)
