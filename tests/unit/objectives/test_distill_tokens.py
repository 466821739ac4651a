"""Token-level distillation (distill_token_cls, distill_mlm, distill_clm, distill_sft) on tiny
models and hand-made batches: alpha=1 is exactly the plain objective's loss, a student equal to
its teacher has zero KL, and the KL is T^2 x KL(teacher || student) summed over exactly the
positions the plain loss counts (targets of -100 never count)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from llmtune.config.schema import RunConfig
from llmtune.data import tokenizer_info, train_tokenizer
from llmtune.errors import CheckpointError
from llmtune.models import build_model
from llmtune.models.family import Kind
from llmtune.models.registry import model_config
from llmtune.objectives import build_objective
from llmtune.objectives.clm import CLMConfig
from llmtune.objectives.distill import load_teacher
from llmtune.objectives.distill_tokens import (
    DistillCLMConfig,
    DistillMLMConfig,
    DistillSFTConfig,
    DistillTokenClsConfig,
)
from llmtune.objectives.entry import Context
from llmtune.objectives.mlm import MLMConfig
from llmtune.objectives.sft import SFTConfig
from llmtune.objectives.token_cls import TokenClsConfig
from tests.conftest import make_documents

LABELS = ["B", "I", "O"]
# student kind: (distill config, plain config, family, tokenizer, head, term)
KINDS = {
    "token_cls": (DistillTokenClsConfig, TokenClsConfig, "bert", "wordpiece", "token_cls"),
    "mlm": (DistillMLMConfig, MLMConfig, "bert", "wordpiece", "mlm"),
    "clm": (DistillCLMConfig, CLMConfig, "gpt", "bpe", "clm"),
    "sft": (DistillSFTConfig, SFTConfig, "gpt", "bpe", "sft"),
}
HEADS = {"token_cls": "token_cls", "mlm": "mlm", "clm": "lm", "sft": "lm"}


@pytest.fixture(scope="module")
def tokenizers() -> dict[str, Tokenizer]:
    docs = make_documents(30)
    return {kind: train_tokenizer(docs, kind, 300, 1, True) for kind in ("wordpiece", "bpe")}


def _model(kind: str, vocab: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    family = KINDS[kind][2]
    keys = dict(vocab_size=vocab, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=16)
    config = model_config(family, dropout=0.0, attn_dropout=0.0, **keys)
    # training mode, as a student is when the teacher's term applies (no dropout: deterministic)
    return build_model(config, (HEADS[kind],), len(LABELS))


def _targets(kind: str, ids: torch.Tensor) -> torch.Tensor:
    """[B, T] targets with -100 at some positions (clm: none, it counts every next token)."""
    gen = torch.Generator().manual_seed(1)
    keep = torch.rand(ids.shape, generator=gen) < 0.5
    keep[:, -1] = False  # the last position never has a target (padding, or nothing next)
    keep[0, 2] = True
    values = torch.randint(0, len(LABELS), ids.shape, generator=gen) if kind == "token_cls" else ids
    return torch.where(keep, values, torch.full_like(ids, -100))


def _batch(kind: str, vocab: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(10, vocab, (3, 8), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0  # a padded row: its padding carries no target
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    key = {"token_cls": "labels", "mlm": "mlm_labels", "sft": "labels"}.get(kind)
    if key:
        batch[key] = _targets(kind, ids).masked_fill(mask == 0, -100)
    if kind in ("clm", "sft"):  # packed rows: two documents in row 0, kept apart for both models
        batch["doc_ids"] = torch.ones_like(ids)
        batch["doc_ids"][0, 4:] = 2
    return batch


def _objective(kind: str, tokenizers, teacher_seed: int | None, **keys):
    distill_cfg, plain_cfg, family, tok, _ = KINDS[kind]
    tokenizer = tokenizers[tok]
    info = tokenizer_info(tokenizer, tok)
    labels = LABELS if kind == "token_cls" else []
    kind_of = Kind.ENCODER if family == "bert" else Kind.DECODER
    student_obj = build_objective(distill_cfg(teacher="t", **keys), info, tokenizer, None, labels)
    plain = build_objective(plain_cfg(), info, tokenizer, None, labels, kind_of)
    vocab = tokenizer.get_vocab_size()
    if teacher_seed is not None:  # the teacher a finetune run would load, here built directly
        student_obj.teacher = _model(kind, vocab, teacher_seed)
    return student_obj, plain, vocab


def _loss(objective, model, batch, term) -> tuple[float, int]:
    with torch.no_grad():
        result = objective.losses(model, batch)[term]
    return float(result.loss_sum), int(objective.count(batch)[term])


@pytest.mark.parametrize("kind", KINDS)
def test_alpha_one_is_exactly_the_plain_objective(kind, tokenizers):
    distilled, plain, vocab = _objective(kind, tokenizers, teacher_seed=1, alpha=1.0)
    student, batch, term = _model(kind, vocab, 0), _batch(kind, vocab), KINDS[kind][4]
    assert _loss(distilled, student, batch, term) == _loss(plain, student, batch, term)
    assert distilled.name == f"distill_{kind}" and distilled.lm_term == term


@pytest.mark.parametrize("kind", KINDS)
def test_validation_reports_the_plain_objective_loss(kind, tokenizers):
    """In eval mode (validation) the loss is the task's own, so its perplexity and accuracy
    compare with a plain run's; the teacher's KL would make exp(loss) meaningless."""
    distilled, plain, vocab = _objective(kind, tokenizers, teacher_seed=1, alpha=0.5)
    student, batch, term = _model(kind, vocab, 0).eval(), _batch(kind, vocab), KINDS[kind][4]
    assert _loss(distilled, student, batch, term) == _loss(plain, student, batch, term)


@pytest.mark.parametrize("kind", KINDS)
def test_a_student_equal_to_its_teacher_has_zero_kl(kind, tokenizers):
    distilled, _, vocab = _objective(kind, tokenizers, teacher_seed=0, alpha=0.0)
    batch, term = _batch(kind, vocab), KINDS[kind][4]
    loss, count = _loss(distilled, _model(kind, vocab, 0), batch, term)
    assert count > 0 and abs(loss) < 1e-5


def _full_logits(kind: str, model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, T', C] logits of every position, [B, T'] their targets), by hand."""
    if kind == "token_cls":
        return model.heads["token_cls"](model.features(batch)), batch["labels"]
    if kind == "mlm":
        return model.heads["mlm"](model.features(batch)), batch["mlm_labels"]
    logits = model.heads["lm"](model(batch["input_ids"], doc_ids=batch["doc_ids"]))[:, :-1]
    if kind == "clm":
        return logits, batch["input_ids"][:, 1:]
    return logits, batch["labels"][:, 1:]


@pytest.mark.parametrize("kind", KINDS)
def test_the_kl_is_summed_over_the_counted_positions_only(kind, tokenizers):
    t = 3.0
    distilled, _, vocab = _objective(kind, tokenizers, 1, alpha=0.25, temperature=t)
    student, batch, term = _model(kind, vocab, 0), _batch(kind, vocab), KINDS[kind][4]
    with torch.no_grad():
        s_logits, targets = _full_logits(kind, student, batch)
        t_logits, _ = _full_logits(kind, distilled.teacher, batch)
        p_teacher = F.softmax(t_logits / t, -1)
        per_position = (p_teacher * (p_teacher.log() - F.log_softmax(s_logits / t, -1))).sum(-1)
        counted = targets != -100
        kl = per_position[counted].sum() * t * t
        hard = F.cross_entropy(s_logits[counted], targets[counted], reduction="sum")
    if kind != "clm":  # masked positions exist, and would change the KL were they counted
        assert (~counted).any()
        assert abs(float(per_position.sum() * t * t - kl)) > 1e-3
    if "doc_ids" in batch:  # and the teacher reads packed rows as packed, as the student does
        with torch.no_grad():
            unpacked = distilled.teacher.heads["lm"](distilled.teacher(batch["input_ids"]))
        assert not torch.allclose(unpacked[:, :-1], t_logits, atol=1e-4)
    loss, count = _loss(distilled, student, batch, term)
    assert count == int(counted.sum())
    assert loss == pytest.approx(float(0.25 * hard + 0.75 * kl), rel=1e-4)


def test_an_lm_teacher_of_another_kind_is_refused(tokenizers):
    """A T5 (encoder-decoder) lm head cannot teach a GPT student: one CheckpointError line."""
    tokenizer = tokenizers["bpe"]
    teacher = SimpleNamespace(
        model=SimpleNamespace(heads={"lm": None}, kind=Kind.ENCODER_DECODER),
        tokenizer=tokenizer,
        meta={"objective": "seq2seq"},
    )
    config = RunConfig(objective=DistillCLMConfig(teacher="runs/t5"))
    info = tokenizer_info(tokenizer, "bpe")
    ctx = Context(config, tokenizer, info, Kind.DECODER, load_checkpoint=lambda ref: teacher)
    says = "objective.teacher=runs/t5: its encoder_decoder model cannot teach a decoder student"
    with pytest.raises(CheckpointError, match=says + "; use a gpt/llama teacher"):
        load_teacher(ctx, "lm")
