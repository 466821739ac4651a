"""The quantized export's report lines read the right way round."""

from __future__ import annotations

from llmtune.export.quantized import _lines

REPORT = {
    "size_mb": [91.2, 60.0],
    "weights_mb": [90.9, 58.7],
    "latency_ms": [88.1, 100.2],
    "batch": [16, 64],
    "metric": "accuracy",
}


def _metric_line(values: list[float], drop: float) -> str:
    report = {**REPORT, "metric_values": values, "relative_drop": drop}
    return _lines(report, 0.03, "int8")[2]


def test_an_improved_metric_is_called_better_not_worse_by_a_negative_share():
    line = _metric_line([0.8009, 0.8025], -0.002)
    assert line.endswith("(delta +0.0016; better by 0.20% relative)"), line


def test_a_worse_metric_and_an_equal_one():
    assert _metric_line([0.80, 0.72], 0.1).endswith("worse by +10.00% relative)")
    assert _metric_line([0.80, 0.80], 0.0).endswith("(delta +0.0000; unchanged)")
