"""Export verification and the extras check: what counts as a difference, what fails."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from llmtune.errors import ConfigError
from llmtune.export import EXTRA_HINT, VerificationError, require
from llmtune.export.verify import check, max_abs_diff

MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])


def test_token_heads_ignore_padding_but_sequence_heads_count_every_row():
    want = torch.zeros(2, 3, 4)
    got = want.clone()
    got[0, 2] = 9.0  # a padding position
    got[1, 0, 1] = 0.25  # a real one
    assert max_abs_diff([want], [got], ["mlm"], MASK) == 0.25
    seq = torch.zeros(2, 2)
    assert max_abs_diff([want, seq], [want, np.full((2, 2), 0.5)], ["mlm", "seq_cls"], MASK) == 0.5


def test_check_fails_above_tolerance_and_on_nan():
    inputs = {"input_ids": torch.zeros(3, 7, dtype=torch.long)}
    assert check(1e-6, 1e-4, "onnxruntime", inputs).startswith("verified: max |logit difference|")
    with pytest.raises(VerificationError, match="verification failed.*2.00e-03"):
        check(2e-3, 1e-4, "onnxruntime", inputs)
    with pytest.raises(VerificationError):
        check(float("nan"), 1e-4, "onnxruntime", inputs)
    assert VerificationError.exit_code == 1


def test_wrong_shape_or_count_is_a_failure():
    want = torch.zeros(2, 3, 4)
    with pytest.raises(VerificationError, match="shape"):
        max_abs_diff([want], [torch.zeros(2, 3, 5)], ["mlm"], MASK)
    with pytest.raises(VerificationError, match="2 outputs"):
        max_abs_diff([want], [want, want], ["mlm"], MASK)


def test_require_names_the_missing_module_and_the_extra(monkeypatch):
    (json_module,) = require("hf", "json")
    assert json_module.dumps([]) == "[]"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ConfigError) as info:
        require("onnx", "json", "onnxruntime")
    assert str(info.value) == f"format=onnx needs onnxruntime, which is not installed: {EXTRA_HINT}"


def test_external_turns_a_foreign_failure_into_one_line_and_passes_user_errors():
    from types import SimpleNamespace

    from llmtune.errors import UserError
    from llmtune.export.job import external

    job = SimpleNamespace(config=SimpleNamespace(format="pt2"))
    with pytest.raises(UserError) as info, external(job, "torch.export failed", "try x"):
        raise RuntimeError("first line\nsecond line")
    assert str(info.value) == "format=pt2: torch.export failed (first line); try x"
    with pytest.raises(VerificationError), external(job, "torch.export failed", "try x"):
        raise VerificationError("verification failed: ...")
