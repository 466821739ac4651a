"""RLHF with PPO (`ppo`) inside THE training loop: `prepare` samples responses to a
micro-batch of prompts, scores them with a reward checkpoint and computes advantages;
`losses` are the clipped policy and value losses on that rollout.

Each rollout serves `ppo_epochs` consecutive optimizer steps (the later ones see the same
samples, which is what makes the ratio and its clipping matter); a resumed run starts a
fresh rollout. The policy runs without dropout in PPO, since the ratio must be exactly 1
before an update.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tokenizers import Tokenizer
from torch import Tensor

from llmtune.config.schema import EvaluateConfig, RunConfig
from llmtune.data.chat import chat_model
from llmtune.data.labelled import Encoded, load_labelled, padded_batch
from llmtune.errors import CheckpointError, ConfigError
from llmtune.models.family import Kind
from llmtune.objectives import rollout
from llmtune.objectives.base import Batch, ObjectiveBase, TermResult
from llmtune.objectives.entry import (
    Built,
    Context,
    LoadCheckpoint,
    ObjectiveEntry,
    Scoring,
    build_rows,
)
from llmtune.objectives.preference import Reference
from llmtune.objectives.reward import scores
from llmtune.objectives.sft import PromptedConfig, check_template, checked_template, layout_prompt


@dataclass(frozen=True)
class PPOConfig(PromptedConfig):
    """RLHF with PPO: sampled responses scored by a reward checkpoint, KL-penalised."""

    name: str = "ppo"  # registered objective name (objectives/registry.py)
    reward_model: str = ""  # a checkpoint trained with objective=reward (init_from's tokenizer)
    kl_coef: float = 0.05  # KL penalty per token against the init model
    gamma: float = 1.0  # discount of GAE
    lam: float = 0.95  # lambda of GAE
    clip_range: float = 0.2  # the policy ratio's clip range
    value_clip: float = 0.2  # how far the value estimate may move from the rollout's
    value_coef: float = 0.5  # weight of the value loss
    ppo_epochs: int = 2  # optimizer steps on each rollout before sampling a new one
    max_new_tokens: int = 24  # response length of a rollout, at most
    sample_temperature: float = 1.0  # rollout sampling (1 = the policy's own distribution)


def load_reward_model(
    path: str, tokenizer: Tokenizer, load_checkpoint: LoadCheckpoint
) -> torch.nn.Module:
    """A frozen reward checkpoint whose tokenizer equals the policy's (it scores the same ids)."""
    loaded = load_checkpoint(path)
    model, reward_tokenizer, meta = loaded.model, loaded.tokenizer, loaded.meta
    if meta.get("objective") != "reward" or "reward" not in model.heads:
        raise CheckpointError(
            f"objective.reward_model={path}: not a reward model (objective="
            f"{meta.get('objective')}); train one with `llmtune finetune objective=reward`"
        )
    if reward_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise CheckpointError(
            f"objective.reward_model={path}: its tokenizer differs from init_from's; train the "
            "reward model from the same base as the policy"
        )
    return model.requires_grad_(False).eval()


class ProximalPolicy(ObjectiveBase):
    name = "ppo"
    heads = ("lm", "value")
    lm_term = "ppo"
    perplexity = False
    vocab_head = False
    packed = False

    def __init__(self, ctx: Context) -> None:
        cfg = ctx.config.objective
        checked_template(cfg.prompt_template)
        self.info, self.tokenizer, self.data = ctx.info, ctx.tokenizer, ctx.config.data
        self.cfg = cfg
        self.chat = chat_model(ctx.config.tokenizer)  # a chat model's prompts: its template
        if ctx.load_checkpoint is None:
            raise ConfigError(
                "objective=ppo scores rollouts with objective.reward_model; "
                "it trains in `llmtune finetune` only"
            )
        self.reward_model = load_reward_model(cfg.reward_model, ctx.tokenizer, ctx.load_checkpoint)
        self.sampling = EvaluateConfig(
            max_new_tokens=cfg.max_new_tokens, temperature=cfg.sample_temperature, stop_at_eos=True
        )
        self.policy: torch.nn.Module | None = None
        self.reference: Reference | None = None
        self.accum = 1
        self._calls = 0  # training micro-batches prepared so far (picks rollout reuse)
        self._stored: list[Batch] = []
        self._stats: dict[str, list[float]] = {"reward": [], "kl": [], "response_tokens": []}

    def encode(self, split, seq_len: int, key: str = "train") -> Encoded:
        """Prompts laid out as sft lays them out (a chat model's template, else
        objective.prompt_template), cut from the left to leave room for max_new_tokens."""
        room = seq_len - self.cfg.max_new_tokens
        if room < 2:
            raise ConfigError(
                f"objective.max_new_tokens={self.cfg.max_new_tokens} leaves no room for a "
                f"prompt in model.max_seq_len={seq_len}; lower it"
            )
        template = self.cfg.prompt_template
        texts = [layout_prompt(template, self.chat, t) for t in split[self.data.instruction_column]]
        encoded = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        rows = [e.ids[-room:] for e in encoded if e.ids]
        overlong = {i: len(e.ids) for i, e in enumerate(encoded) if len(e.ids) > room}
        return Encoded({"input_ids": rows}, overlong, len(encoded) - len(rows))

    def batch(self, encoded: Encoded) -> Batch:
        return padded_batch(encoded, self.info.pad_id)

    def bind(self, model: torch.nn.Module, config: RunConfig) -> None:
        """The policy to sample from and its reference (the model as loaded)."""
        self.policy, self.reference = model, Reference.of(model, config)
        t = config.train
        self.accum = t.global_batch_size // (t.micro_batch_size * config.hardware.world_size)

    # ---- rollouts ---------------------------------------------------------------------------
    def prepare(self, batch: Batch, generator: torch.Generator | None) -> Batch:
        """A rollout of this micro-batch's prompts; in training, reused for ppo_epochs steps."""
        if self.policy is None or self.reference is None:
            raise RuntimeError("ProximalPolicy.bind(model, config) must run before training")
        if not self.policy.training:  # validation: always fresh samples of the current policy
            return self._rollout(batch, generator)
        index, self._calls = self._calls, self._calls + 1
        if (index // self.accum) % self.cfg.ppo_epochs:
            return self._stored[index % self.accum]
        if index % self.accum == 0:
            self._stored = []
        self._stored.append(self._rollout(batch, generator))
        return self._stored[-1]

    @torch.no_grad()
    def _rollout(self, batch: Batch, generator: torch.Generator | None) -> Batch:
        policy, device = self.policy, next(self.policy.parameters()).device
        lengths = batch["attention_mask"].sum(1).tolist()
        prompts = [row[:n].tolist() for row, n in zip(batch["input_ids"], lengths)]
        responses = rollout.sample(policy, prompts, self.sampling, self.info.eos_id, generator)
        out = {
            k: v.to(device) for k, v in rollout.pack(prompts, responses, self.info.pad_id).items()
        }
        was_training = policy.training
        policy.eval()
        old_logp, old_values = rollout.action_logps(policy, out["input_ids"], out["actions"], True)
        policy.train(was_training)
        ref_logp, _ = self.reference.run(
            policy, rollout.action_logps, out["input_ids"], out["actions"]
        )
        self.reward_model.to(device)
        score = scores(self.reward_model, out)  # [B]
        kl = old_logp - ref_logp  # [n] per-token log-ratio to the reference (its mean is the KL)
        sizes = out["actions"].sum(1).tolist()
        advantages, returns, kl_rows = [], [], []
        for i, (k, v) in enumerate(zip(kl.split(sizes), old_values.split(sizes))):
            reward = -self.cfg.kl_coef * k
            reward[-1] += score[i]  # the reward model judges the whole response at its end
            adv, ret = rollout.gae(reward, v, self.cfg.gamma, self.cfg.lam)
            advantages.append(adv)
            returns.append(ret)
            kl_rows.append(k.sum())
        adv = torch.cat(advantages)
        # whitened advantages: the step size no longer depends on the reward's scale
        adv = (adv - adv.mean()) / (adv.std(unbiased=False) + 1e-8)
        out.update(old_logp=old_logp, old_values=old_values, advantages=adv)
        out.update(returns=torch.cat(returns), score=score, kl=torch.stack(kl_rows))
        out["response_tokens"] = torch.tensor(sizes, dtype=torch.float, device=device)
        if policy.training:
            for key, name in (
                ("reward", "score"),
                ("kl", "kl"),
                ("response_tokens", "response_tokens"),
            ):
                self._stats[key].append(float(out[name].mean()))
        return out

    def count(self, batch: Batch) -> dict[str, Tensor]:
        n = batch["actions"].sum()
        return {"ppo": n, "value": n}

    def losses(self, model: torch.nn.Module, batch: Batch) -> dict[str, TermResult]:
        was_training = model.training
        model.eval()  # no dropout: the ratio to the rollout's policy starts at exactly 1
        try:
            logp, values = rollout.action_logps(model, batch["input_ids"], batch["actions"], True)
        finally:
            model.train(was_training)
        policy = rollout.clipped_policy_loss(
            logp, batch["old_logp"], batch["advantages"], self.cfg.clip_range
        )
        value = rollout.clipped_value_loss(
            values, batch["old_values"], batch["returns"], self.cfg.value_clip
        )
        rows = torch.tensor(batch["score"].numel(), device=logp.device)
        clipped = ((logp - batch["old_logp"]).exp() - 1).abs().detach() > self.cfg.clip_range
        extra = {
            "reward": (batch["score"].sum(), rows),
            "kl": (batch["kl"].sum(), rows),
            "response_tokens": (batch["response_tokens"].sum(), rows),
            "clip_fraction": (clipped.sum(), torch.tensor(logp.numel())),
        }
        zero = torch.zeros((), device=logp.device)  # no notion of a correct prediction here
        return {
            "ppo": TermResult(policy.sum(), zero, extra=extra),
            "value": TermResult(self.cfg.value_coef * value.sum(), zero),
        }

    def train_metrics(self) -> dict[str, float]:
        """Mean reward, KL to the reference and response length of the rollouts since the
        last call (logged with every train record)."""
        out = {k: sum(v) / len(v) for k, v in self._stats.items() if v}
        self._stats = {k: [] for k in self._stats}
        return out

    def input_tokens(self, batch: Batch) -> int:
        return int(batch["attention_mask"].sum())


def check(config: RunConfig, kind: Kind | None) -> None:
    check_template(config, kind)
    o = config.objective
    if not o.reward_model:
        raise ConfigError(
            "objective.reward_model is required with objective=ppo; set it to a checkpoint "
            "trained with objective=reward"
        )
    for key in ("kl_coef", "clip_range", "value_clip", "value_coef", "sample_temperature"):
        if getattr(o, key) < 0:
            raise ConfigError(f"objective.{key}={getattr(o, key)}: must be >= 0")
    for key in ("gamma", "lam"):
        if not 0 <= getattr(o, key) <= 1:
            raise ConfigError(f"objective.{key}={getattr(o, key)}: must be in [0, 1]")
    for key in ("ppo_epochs", "max_new_tokens"):
        if getattr(o, key) <= 0:
            raise ConfigError(f"objective.{key}={getattr(o, key)}: must be positive")


def make(ctx: Context, labels: list) -> ProximalPolicy:
    return ProximalPolicy(ctx)


def build(ctx: Context) -> Built:
    config = ctx.config
    raw = load_labelled(config.data, [config.data.instruction_column], config.seed)
    return build_rows(ctx, make, raw, [])


ENTRY = ObjectiveEntry(
    name="ppo",
    config=PPOConfig,
    kinds=(Kind.DECODER,),
    labelled=True,
    heads=lambda config: ("lm", "value"),
    make=make,
    build=build,
    scoring=Scoring.LANGUAGE_MODEL,  # a ppo policy is a language model
    check=check,
    columns=lambda cfg, data: [data.instruction_column],
)
