"""Preference objectives against hand computations: reward loss, DPO/IPO loss, the LoRA-off
reference, GAE, PPO's clipped losses, and pairs built from instruction data."""

from __future__ import annotations

import math

import pytest
import torch
from tokenizers import Tokenizer

from llmtune.adapters import METHODS, adapters_disabled, apply_method
from llmtune.adapters.lora import LoraConfig
from llmtune.config.schema import FilesData, RunConfig
from llmtune.data import tokenizer_info, train_tokenizer
from llmtune.data.labelled import IGNORE
from llmtune.data.preference import build_pairs
from llmtune.models import build_model
from llmtune.models.bert import BertConfig
from llmtune.objectives import build_objective, entry
from llmtune.objectives.dpo import DPOConfig, preference_loss
from llmtune.objectives.preference import sequence_logps
from llmtune.objectives.reward import RewardConfig, pairwise_loss
from llmtune.objectives.rollout import clipped_policy_loss, clipped_value_loss, gae, pack
from tests.conftest import make_documents
from tests.unit.train.test_accumulation import tiny_model

PAIRS = {
    "prompt": ["the river", "a city", "blue road"],
    "chosen": ["walks north", "sings", "opens the window"],
    "rejected": ["red", "keeps the old stone", "finds"],
}


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return train_tokenizer(make_documents(40), "bpe", 300, 1, True)


def _gpt(bpe: Tokenizer) -> torch.nn.Module:
    torch.manual_seed(0)
    config = tiny_model("gpt", vocab_size=bpe.get_vocab_size(), max_seq_len=32)
    return build_model(config, ("lm",))


def _dpo(bpe: Tokenizer, model, method: str = "full", loss: str = "dpo"):
    cfg = DPOConfig(beta=0.5, loss=loss, prompt_template="Q: {instruction} A:")
    task = build_objective(cfg, tokenizer_info(bpe, "bpe"), bpe, FilesData())
    task.bind(model, RunConfig(method=METHODS[method].config()))
    return task


def test_reward_loss_is_minus_log_sigmoid_of_the_margin():
    chosen, rejected = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([1.0, 0.0, 3.0])
    expected = [-math.log(1 / (1 + math.exp(-d))) for d in (1.0, 0.0, -4.0)]
    assert pairwise_loss(chosen, rejected).tolist() == pytest.approx(expected, rel=1e-6)


def test_dpo_and_ipo_losses_match_hand_computations():
    h = torch.tensor([0.0, 2.0, -1.0])
    sigmoid = [-math.log(1 / (1 + math.exp(-0.1 * x))) for x in (0.0, 2.0, -1.0)]
    assert preference_loss(h, 0.1, "dpo").tolist() == pytest.approx(sigmoid, rel=1e-6)
    # IPO: (h - 1/(2 beta))^2 with beta = 0.25 -> target 2
    assert preference_loss(h, 0.25, "ipo").tolist() == pytest.approx([4.0, 0.0, 9.0])


def test_pair_batch_stacks_chosen_over_rejected_with_response_targets(bpe):
    task = _dpo(bpe, _gpt(bpe))
    batch = task.prepare(task.make_examples(PAIRS, 32, 0), None)
    assert batch["input_ids"].shape[0] == 6 and int(task.count(batch)["dpo"]) == 3
    prompt = bpe.encode("Q: a city A:", add_special_tokens=False).ids
    response = bpe.encode("keeps the old stone", add_special_tokens=False).ids
    row = batch["labels"][4]  # the rejected answer of the second pair
    assert row[: len(prompt)].tolist() == [IGNORE] * len(prompt)
    assert row[len(prompt) : len(prompt) + len(response)].tolist() == response


def test_sequence_logps_sum_the_response_tokens_only(bpe):
    model = _gpt(bpe).eval()
    task = _dpo(bpe, model)
    batch = task.prepare(task.make_examples(PAIRS, 32, 0), None)
    logps = sequence_logps(model, batch)
    logits = model.heads["lm"](model(batch["input_ids"])).log_softmax(-1)
    for i in range(6):
        targets = batch["labels"][i, 1:]
        keep = targets != IGNORE
        hand = logits[i, :-1][keep].gather(-1, targets[keep][:, None]).sum()
        assert float(logps[i].detach()) == pytest.approx(float(hand.detach()), rel=1e-5)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_dpo_at_init_is_log2_per_pair_and_learns_from_a_step(bpe, method):
    model = _gpt(bpe)
    if method == "lora":
        apply_method(model, LoraConfig(rank=2, dropout=0.0))
    task = _dpo(bpe, model, method)
    assert (task.reference.copy is None) == (method == "lora")
    batch = task.prepare(task.make_examples(PAIRS, 32, 0), None)
    term = task.losses(model.eval(), batch)["dpo"]
    assert float(term.loss_sum) == pytest.approx(3 * math.log(2), rel=1e-5)
    term.loss_sum.backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)


def test_dpo_reports_pairwise_logp_accuracy_of_policy_and_reference(bpe):
    """Pairs whose chosen answer is more likely, under the policy and under the frozen model
    as loaded (the accuracy before tuning), counted on the same pairs."""
    model = _gpt(bpe).eval()
    task = _dpo(bpe, model)
    batch = task.prepare(task.make_examples(PAIRS, 32, 0), None)

    def hand() -> int:
        chosen, rejected = sequence_logps(model, batch).detach().chunk(2)
        return int((chosen > rejected).sum())

    before = hand()
    torch.manual_seed(1)
    with torch.no_grad():  # the policy moves, the reference (a frozen copy) does not
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    after = hand()
    extra = task.losses(model, batch)["dpo"].extra
    assert int(extra["reference_logp_accuracy"][0]) == before
    assert int(extra["logp_accuracy"][0]) == after
    assert int(extra["logp_accuracy"][1]) == 3  # per pair


def test_lora_disabled_model_equals_the_base_and_adapters_come_back(bpe):
    model = _gpt(bpe).eval()
    ids = torch.tensor([[5, 9, 14, 3, 7]])
    base = model.heads["lm"](model(ids))
    apply_method(model, LoraConfig(rank=2, dropout=0.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_()  # a trained adapter: the model now differs from the base
    adapted = model.heads["lm"](model(ids))
    assert not torch.allclose(adapted, base, atol=1e-4)
    model.train()
    with adapters_disabled(model):
        assert not model.training
        assert torch.allclose(model.heads["lm"](model(ids)), base, atol=1e-6)
    assert model.training
    model.eval()
    assert torch.allclose(model.heads["lm"](model(ids)), adapted, atol=1e-6)


def test_gae_matches_a_hand_computed_example():
    rewards = torch.tensor([0.0, -0.1, 1.0])
    values = torch.tensor([0.5, 0.2, 0.4])
    gamma, lam = 0.9, 0.8
    d2 = 1.0 - 0.4  # last token: no next value
    d1 = -0.1 + 0.9 * 0.4 - 0.2
    d0 = 0.0 + 0.9 * 0.2 - 0.5
    a2, a1 = d2, d1 + 0.72 * d2
    a0 = d0 + 0.72 * a1
    advantages, returns = gae(rewards, values, gamma, lam)
    assert advantages.tolist() == pytest.approx([a0, a1, a2], abs=1e-6)
    assert returns.tolist() == pytest.approx([a0 + 0.5, a1 + 0.2, a2 + 0.4], abs=1e-6)


def test_clipped_policy_loss_stops_gaining_beyond_the_clip_range():
    old = torch.zeros(4)
    logp = torch.log(torch.tensor([1.5, 1.5, 0.5, 1.1]))
    adv = torch.tensor([1.0, -1.0, 1.0, 2.0])
    # ratio 1.5, A>0: clipped at 1.2; A<0: the unclipped -A r is larger; ratio 0.5, A>0:
    # the unclipped -0.5 is larger (pessimistic); inside the range it is plain -A r
    expected = [-1.2, 1.5, -0.5, -2.2]
    assert clipped_policy_loss(logp, old, adv, 0.2).tolist() == pytest.approx(expected, rel=1e-6)
    logp.requires_grad_(True)
    clipped_policy_loss(logp, old, adv, 0.2).sum().backward()
    assert logp.grad[0] == 0 and logp.grad[1] != 0  # clipped terms pass no gradient


def test_clipped_value_loss_takes_the_larger_error():
    values, old, returns = (
        torch.tensor([1.0, 0.0]),
        torch.tensor([0.0, 0.0]),
        torch.tensor([1.0, 2.0]),
    )
    # value 1 moved by 1 > 0.2: the clipped value 0.2 has the larger error to return 1
    assert clipped_value_loss(values, old, returns, 0.2).tolist() == pytest.approx(
        [0.5 * 0.8**2, 0.5 * 4.0]
    )


def test_pack_marks_the_positions_that_predict_response_tokens():
    out = pack([[1, 2, 3], [4]], [[7, 8], [9, 9, 9]], pad_id=0)
    assert out["input_ids"].tolist() == [[1, 2, 3, 7, 8], [4, 9, 9, 9, 0]]
    assert out["actions"].tolist() == [[False, False, True, True], [True, True, True, False]]


@pytest.mark.parametrize("mode", ["other_response", "shuffled_response"])
def test_built_pairs_are_deterministic_by_seed_and_never_reject_the_truth(mode):
    asks = [f"question {i}" for i in range(20)] + ["question 0"]
    answers = [f"answer number {i} here" for i in range(20)] + ["single"]
    pairs = build_pairs(asks, answers, mode, 3)
    assert pairs == build_pairs(asks, answers, mode, 3)
    assert pairs != build_pairs(asks, answers, mode, 4)
    if mode == "other_response":
        assert len(pairs["prompt"]) == 21
    else:  # a one-word response cannot be shuffled into a different text: skipped
        assert "single" not in pairs["chosen"] and len(pairs["prompt"]) >= 15
    truth = dict(zip(answers, asks))
    for prompt, chosen, rejected in zip(pairs["prompt"], pairs["chosen"], pairs["rejected"]):
        assert truth[chosen] == prompt and rejected != chosen
        if mode == "other_response":
            assert rejected in truth and truth[rejected] != prompt
        else:
            assert sorted(rejected.split()) == sorted(chosen.split())


@pytest.mark.parametrize("name", ["dpo", "ppo"])
def test_dpo_and_ppo_need_a_decoder_but_reward_models_take_both(name):
    from llmtune.config.validate import check_model_fits
    from llmtune.errors import ConfigError

    bert = BertConfig()
    config = RunConfig(command="finetune", model=bert, objective=entry(name).config())
    with pytest.raises(ConfigError, match=f"objective={name} needs a gpt/llama model.*bert model"):
        check_model_fits(config)
    check_model_fits(RunConfig(command="finetune", model=bert, objective=RewardConfig()))
