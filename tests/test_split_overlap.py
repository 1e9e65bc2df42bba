"""benchmarks/split_overlap.py: nearest-neighbour cosine distances and their summary."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.split_overlap import nearest, summary


def test_a_copy_is_at_zero_and_leaving_itself_out_finds_the_next():
    bank = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    d, which = nearest(np.array([[2.0, 0.0], [0.0, -1.0]]), bank)
    assert d[0] == pytest.approx(0.0) and which[0] == 0  # a scaled copy: the same direction
    assert d[1] == pytest.approx(1.0) and which[1] == 0  # at right angles to [1, 0], opposite the others
    own, which = nearest(bank, bank, exclude_self=True)
    assert list(which) == [2, 2, 0] and own[0] == pytest.approx(1 - 1 / np.sqrt(2))


def test_summary_counts_the_shares_below_each_threshold():
    s = summary(np.array([0.01, 0.03, 0.07, 0.2]))
    assert s["below"] == {"0.02": 0.25, "0.05": 0.5, "0.1": 0.75}
    assert s["median"] == pytest.approx(0.05)
