"""Encoder-decoder generation: greedy and beam search equal transformers' `generate`, beam
search with enough beams finds the exhaustive search's best sequence, the cached decoder
equals recomputation, sampling follows its seed and not its batch."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from llmtune.config.schema import EvaluateConfig
from llmtune.errors import ConfigError
from llmtune.models import build_model
from llmtune.models.generation import generate
from llmtune.models.seq2seq_generation import generate_seq2seq
from tests.unit.models.test_t5 import V10, V11, hf_twin

transformers = pytest.importorskip("transformers")
START, EOS = 0, 1


def _model(config, vocab: int = 60):
    # transformers 5.25's generate sizes its decoder cache by the encoder's layer count,
    # so the comparison uses as many decoder layers as encoder layers
    config = dataclasses.replace(config, vocab_size=vocab, n_decoder_layers=0)
    torch.manual_seed(0)
    model = build_model(config, ("lm",)).eval()
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


def _rows(ids, mask) -> list[list[int]]:
    return [r[m.bool()].tolist() for r, m in zip(ids, mask)]


def _hf_rows(sequences: torch.Tensor) -> list[list[int]]:
    """transformers' output without the start token, cut after the first EOS."""
    rows = []
    for row in sequences.tolist():
        row = row[1:]
        rows.append(row[: row.index(EOS) + 1] if EOS in row else row)
    return rows


@pytest.mark.parametrize(
    "config", [pytest.param(V10, marks=pytest.mark.slow), V11], ids=["v1.0", "v1.1"]
)
def test_greedy_and_beam_search_equal_transformers_generate(config):
    model, config = _model(config)
    hf = hf_twin(model, config)
    ids, mask = _inputs()
    reasons = set()
    for beams, penalty in ((1, 1.0), (3, 1.0), (4, 0.5), (4, 2.0)):
        cfg = EvaluateConfig(max_new_tokens=12, num_beams=beams, length_penalty=penalty)
        ours = generate_seq2seq(model, _rows(ids, mask), cfg, EOS)
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


def _best_by_teacher_forcing(model, source: list[int], candidates: list[list[int]]) -> list[int]:
    """The candidate target of highest log p(target | source), scored one length at a time."""
    best, best_logp = None, -float("inf")
    for n in sorted({len(c) for c in candidates}):
        same = torch.tensor([c for c in candidates if len(c) == n])  # [N,n]
        src = torch.tensor([source]).expand(len(same), -1)
        dec = torch.cat([torch.full((len(same), 1), START), same[:, :-1]], dim=1)
        with torch.no_grad():
            logp = model.heads["lm"](model(src, decoder_input_ids=dec)).log_softmax(-1)
        scores = logp.gather(-1, same[..., None]).squeeze(-1).sum(-1)  # [N]
        i = int(scores.argmax())
        if float(scores[i]) > best_logp:
            best, best_logp = same[i].tolist(), float(scores[i])
    return best


def test_beam_search_with_enough_beams_is_the_exhaustive_search():
    """Vocabulary 5, up to 3 new tokens: every sequence that ends in EOS or fills the length
    is scored by teacher forcing; with 25 beams (every 2-token prefix survives) and no length
    penalty the beam's answer is the exhaustive argmax, where greedy decoding misses it."""
    torch.manual_seed(4)  # a model (found by trying seeds) whose greedy answer is not the best
    model = build_model(dataclasses.replace(V11, vocab_size=5, n_decoder_layers=0), ("lm",))
    with torch.no_grad():
        model.eval().heads["lm"].weight.mul_(4.0)
    sources = [[2, 3, 4, 2], [4, 4, 3], [3, 2]]
    length = 3
    candidates = [[*p, EOS] for n in range(length) for p in itertools.product(range(5), repeat=n)]
    candidates += [list(p) for p in itertools.product(range(5), repeat=length)]
    candidates = [c for c in candidates if EOS not in c[:-1]]
    best = [_best_by_teacher_forcing(model, s, candidates) for s in sources]
    cfg = EvaluateConfig(max_new_tokens=length, num_beams=25, length_penalty=0.0)
    assert [g.token_ids for g in generate_seq2seq(model, sources, cfg, EOS)] == best
    greedy = generate_seq2seq(model, sources, EvaluateConfig(max_new_tokens=length), EOS)
    assert [g.token_ids for g in greedy] != best
    one_beam = generate_seq2seq(model, sources, dataclasses.replace(cfg, num_beams=1), EOS)
    assert [g.token_ids for g in one_beam] == [g.token_ids for g in greedy]


@pytest.mark.parametrize("beams", [1, 3])
def test_cached_generation_equals_recomputation(beams):
    model, _ = _model(V11)
    rows = _rows(*_inputs())
    cfg = EvaluateConfig(max_new_tokens=10, num_beams=beams)
    cached = generate_seq2seq(model, rows, cfg, EOS)
    full = generate_seq2seq(model, rows, cfg, EOS, use_cache=False)
    assert [g.token_ids for g in cached] == [g.token_ids for g in full]


def test_sampling_follows_its_seed_not_its_batch_and_top_k_1_is_greedy():
    model, _ = _model(V11)
    rows = _rows(*_inputs())
    sample = EvaluateConfig(max_new_tokens=10, temperature=1.0)

    def run(seed: int, cfg: EvaluateConfig) -> list[list[int]]:
        gen = torch.Generator().manual_seed(seed)
        return [g.token_ids for g in generate_seq2seq(model, rows, cfg, EOS, gen)]

    assert run(1, sample) == run(1, sample)
    assert run(1, sample) != run(2, sample)
    assert run(1, dataclasses.replace(sample, batch_size=2)) == run(1, sample)
    greedy = run(0, EvaluateConfig(max_new_tokens=10))
    assert run(5, dataclasses.replace(sample, top_k=1)) == greedy


def test_generate_reads_a_prompt_as_the_source_plus_eos():
    model, _ = _model(V11)
    rows = _rows(*_inputs())
    cfg = EvaluateConfig(max_new_tokens=6)
    direct = generate_seq2seq(model, [[*r, EOS] for r in rows], cfg, EOS)
    assert [g.token_ids for g in generate(model, rows, cfg, EOS)] == [g.token_ids for g in direct]


def test_bad_settings_are_refused():
    model, _ = _model(V11)
    rows = _rows(*_inputs())
    with pytest.raises(ConfigError, match="temperature=0"):
        generate_seq2seq(model, rows, EvaluateConfig(num_beams=2, temperature=0.7), EOS)
    with pytest.raises(ConfigError, match="num_beams"):
        generate_seq2seq(model, rows, EvaluateConfig(num_beams=0), EOS)
