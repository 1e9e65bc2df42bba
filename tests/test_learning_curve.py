"""The learning-curve benchmark's verdict: a step up the curve counts only beyond twice its standard error."""

from __future__ import annotations

import pytest

from benchmarks.learning_curve import summarise


def test_a_clear_rise_counts_and_a_noisy_one_does_not():
    clear = summarise({0.2: [0.40, 0.41, 0.39], 0.4: [0.50, 0.52, 0.51], 1.0: [0.60, 0.61, 0.59]})
    assert clear["rises"] and all(s["beyond_two_se"] for s in clear["steps"])
    assert clear["per_share"]["0.4"]["mean"] == pytest.approx(0.51)
    assert clear["steps"][0]["gain"] == pytest.approx(0.11)
    noisy = summarise({0.2: [0.40, 0.55, 0.30], 0.4: [0.45, 0.35, 0.52], 1.0: [0.60, 0.61, 0.59]})
    assert not noisy["rises"] and not noisy["steps"][0]["beyond_two_se"]


def test_one_seed_gives_no_error_bar_and_no_verdict():
    one = summarise({0.5: [0.3], 1.0: [0.4]})
    assert one["per_share"]["1"]["std"] is None and one["steps"][0]["se"] is None and not one["rises"]
