"""Verification shared by every format: the largest absolute logit difference between the
llmtune model and an exported artifact on the sample inputs; above tolerance is an error."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from llmtune.errors import UserError
from llmtune.export.inference import SEQUENCE_HEADS

if TYPE_CHECKING:
    from llmtune.export.job import ExportJob


class VerificationError(UserError):
    """An export that does not reproduce the model: the run fails (exit 1), nothing is kept."""

    exit_code = 1


@torch.no_grad()
def reference_logits(inference: torch.nn.Module, inputs: dict) -> tuple[torch.Tensor, ...]:
    return tuple(t.float() for t in inference(*inputs.values()))


def max_abs_diff(
    expected: Sequence[torch.Tensor],
    got: Sequence[torch.Tensor | np.ndarray],
    heads: Sequence[str],
    attention_mask: torch.Tensor,
) -> float:
    """Largest |expected - got| over every head; token heads count real (unpadded) positions
    only, since what a pad position computes differs between implementations and is unused."""
    if len(got) != len(expected):
        raise VerificationError(f"the export returned {len(got)} outputs, expected {len(expected)}")
    worst = 0.0
    real = attention_mask.bool()
    for head, want, have in zip(heads, expected, got):
        have = torch.as_tensor(np.asarray(have) if not torch.is_tensor(have) else have).float()
        if have.shape != want.shape:
            raise VerificationError(
                f"{head} logits: the export gives shape {tuple(have.shape)}, "
                f"llmtune {tuple(want.shape)}"
            )
        diff = (want - have).abs()
        if head not in SEQUENCE_HEADS:
            diff = diff[real]
        worst = max(worst, float(diff.max()) if diff.numel() else 0.0)
    return worst


def check(diff: float, atol: float, against: str, inputs: dict) -> str:
    """The verification line, or VerificationError when `diff` exceeds `atol` (or is NaN)."""
    b, t = inputs["input_ids"].shape
    line = (
        f"max |logit difference| {diff:.2e} (tolerance {atol:.0e}), {against} vs llmtune, "
        f"on {b} sample inputs of up to {t} tokens"
    )
    if not diff <= atol:  # also catches NaN
        raise VerificationError(f"verification failed: {line}; the export was not kept")
    return f"verified: {line}"


def verify(
    job: ExportJob,
    got: Sequence[torch.Tensor | np.ndarray],
    against: str,
    expected: Sequence[torch.Tensor] | None = None,
) -> str:
    """Check an artifact's outputs on `job.sample` against `expected` (by default the llmtune
    inference graph's); the verification line, or VerificationError."""
    if expected is None:
        expected = reference_logits(job.inference, job.sample)
    mask = job.sample["attention_mask"]
    if "decoder_input_ids" in job.sample:  # logits are per target position: a causal decoder
        # computes the same at every one, padding included, in any implementation
        mask = torch.ones_like(job.sample["decoder_input_ids"])
    diff = max_abs_diff(expected, got, job.inference.heads, mask)
    return check(diff, job.config.export.atol, against, job.sample)
