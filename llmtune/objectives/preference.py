"""What reward models and DPO share: (prompt, chosen, rejected) examples, a micro-batch that
stacks chosen rows over rejected rows, sequence log-probabilities, and the frozen reference."""

from __future__ import annotations

import copy

import torch
from tokenizers import Tokenizer
from torch import Tensor

from llmtune.adapters.lora import adapters_disabled
from llmtune.config.schema import DataConfig, RunConfig, TokenizerConfig
from llmtune.data import TokenizerInfo
from llmtune.data.chat import chat_model
from llmtune.data.labelled import IGNORE, Encoded
from llmtune.data.preference import (
    REJECTED,
    encode_chat_pairs,
    encode_pairs,
    load_preferences,
    pair_batch,
)
from llmtune.models.family import Kind
from llmtune.objectives.base import Batch, ObjectiveBase
from llmtune.objectives.classification import trim_padding
from llmtune.objectives.entry import Built, Context, build_rows
from llmtune.objectives.rollout import action_logps
from llmtune.objectives.sft import checked_template, layout_prompt


class PairTask(ObjectiveBase):
    """Examples and batching of preference pairs; subclasses add `name`, `heads`, `losses`.

    A prepared micro-batch of B pairs has 2B rows: the chosen sequences, then the rejected
    ones in the same order, so one forward scores both and `chunk(2)` splits them again. A
    decoder chat model (`chat`: tokenizer settings with a chat template) reads each pair laid
    out by its template, as sft trains it.
    """

    name = "pairs"
    lm_term = "pairs"
    perplexity = False  # validation: a pairwise loss has no perplexity
    needs_reference = False  # scored against the frozen init model (dpo): `reference` set
    vocab_head = False  # dpo's response log-probs: not counted per pair
    packed = False

    def __init__(
        self,
        info: TokenizerInfo,
        tokenizer: Tokenizer,
        data: DataConfig,
        template: str,
        kind: Kind,
        chat: TokenizerConfig | None = None,
    ) -> None:
        self.info, self.tokenizer, self.data = info, tokenizer, data
        self.template = checked_template(template)
        # an encoder reads prompt and response as segments A and B; a decoder continues the
        # prompt (sft's layout) with the response, whose tokens are the targets
        self.segments = kind == Kind.ENCODER
        self.chat = None if self.segments else chat_model(chat)

    def prompt(self, text: str) -> str:
        """A decoder's prompt laid out as sft lays it out; an encoder's: the text."""
        return text if self.segments else layout_prompt(self.template, self.chat, text)

    def encode(self, split, seq_len: int, key: str = "train") -> Encoded:
        """`split`: a Dataset (or dict of lists) with prompt, chosen and rejected columns."""
        rows = {k: list(split[k]) for k in ("prompt", "chosen", "rejected")}
        if self.chat is not None:  # the template closes each turn: no EOS appended
            return encode_chat_pairs(self.tokenizer, self.chat, rows, seq_len)
        rows["prompt"] = [self.prompt(p) for p in rows["prompt"]]
        return encode_pairs(self.tokenizer, self.segments, rows, self.info.eos_id, seq_len)

    def batch(self, encoded: Encoded) -> Batch:
        return pair_batch(encoded, self.info.pad_id)

    def make_examples(self, split, seq_len: int, seed: int) -> Batch:
        return self.batch(self.encode(split, seq_len))

    def prepare(self, batch: Batch, generator: torch.Generator | None) -> Batch:
        stacked = {
            k: torch.cat([v, batch[REJECTED + k]])
            for k, v in batch.items()
            if not k.startswith(REJECTED)
        }
        return trim_padding(stacked)

    def count(self, batch: Batch) -> dict[str, Tensor]:
        return {self.name: torch.tensor(batch["input_ids"].shape[0] // 2)}

    def input_tokens(self, batch: Batch) -> int:
        return int(batch["attention_mask"].sum())


def sequence_logps(model: torch.nn.Module, batch: Batch) -> Tensor:
    """[N] summed log-probability of each row's target tokens (labels != IGNORE): PPO's
    per-token action log-probs summed per row (pair rows' labels are their ids, or IGNORE)."""
    scored = batch["labels"][:, 1:] != IGNORE  # position t predicts token t+1
    token_logps, _ = action_logps(model, batch["input_ids"], scored)  # [n_targets]
    rows = torch.arange(scored.shape[0], device=scored.device)[:, None].expand_as(scored)
    out = torch.zeros(scored.shape[0], device=scored.device, dtype=token_logps.dtype)
    return out.index_add(0, rows[scored], token_logps)


class Reference:
    """The frozen model a policy is kept close to: the init checkpoint as loaded.

    With method=lora it is the policy itself with its adapters switched off (no second
    copy); otherwise a frozen copy taken before fine-tuning changes anything.
    """

    def __init__(self, frozen: torch.nn.Module | None) -> None:
        self.copy = None if frozen is None else frozen.requires_grad_(False).eval()

    @classmethod
    def of(cls, model: torch.nn.Module, config: RunConfig) -> Reference:
        """The reference of a run about to fine-tune `model` (as loaded) with config.method."""
        return cls(None if config.method.name == "lora" else copy.deepcopy(model))

    @torch.no_grad()
    def run(self, policy: torch.nn.Module, fn, *args):  # noqa: ANN001, ANN201
        """fn(reference model, *args) without gradients, in eval mode."""
        if self.copy is None:
            with adapters_disabled(policy):
                return fn(policy, *args)
        device = next(policy.parameters()).device
        if next(self.copy.parameters()).device != device:
            self.copy.to(device)
        return fn(self.copy, *args)


def build_pairs_task(ctx: Context, make) -> Built:  # noqa: ANN001 (make: Context, labels -> PairTask)
    """A preference objective's examples: (prompt, chosen, rejected) pairs of data.train and
    data.validation, or pairs built from instruction data (data.preference_pairs)."""
    return build_rows(ctx, make, load_preferences(ctx.config.data, ctx.config.seed), [])
