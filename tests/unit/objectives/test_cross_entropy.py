"""sum_cross_entropy: the same loss whether or not gradients are on; the count right (a
validation metric) is counted under no_grad, and a training step skips its argmax."""

from __future__ import annotations

import torch

from llmtune.objectives.base import sum_cross_entropy


def logits_and_targets() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 30, generator=g)
    targets = torch.randint(0, 30, (12,), generator=g)
    targets[[2, 7]] = -100  # ignored rows
    targets[0] = int(logits[0].argmax())  # at least one right
    return logits, targets


def test_loss_is_the_same_with_and_without_gradients_and_validation_counts_right():
    logits, targets = logits_and_targets()
    with torch.no_grad():
        evaluated = sum_cross_entropy(logits, targets)
    trained = sum_cross_entropy(logits.clone().requires_grad_(), targets)
    assert torch.equal(trained.loss_sum.detach(), evaluated.loss_sum)
    valid = targets != -100
    right = int(((logits.argmax(-1) == targets) & valid).sum())
    assert right >= 1 and int(evaluated.n_correct) == right
    assert int(trained.n_correct) == 0  # nothing reads it while training


def test_kept_predictions_are_returned_with_gradients_on():
    """Classification terms (keep=True) still give predictions and the count right."""
    logits, targets = logits_and_targets()
    term = sum_cross_entropy(logits.clone().requires_grad_(), targets, keep=True)
    valid = targets != -100
    assert torch.equal(term.predicted, logits.argmax(-1)[valid])
    assert torch.equal(term.target, targets[valid])
    assert int(term.n_correct) == int((term.predicted == term.target).sum())
