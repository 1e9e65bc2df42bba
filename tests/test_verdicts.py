"""Verdicts on made-up metric arrays: a clear win, a tie, a loss; a bootstrap interval for one seed; worth in real
defects on a made-up monotone curve, between its points, past its top and below it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from defectgen.evaluate.verdicts import Spread, WorthOverSeeds, bootstrap_difference, paired, worth_in_real_defects


def test_spread_is_mean_and_sample_std():
    s = Spread((0.5, 0.6, 0.7))
    assert s.mean == pytest.approx(0.6) and s.std == pytest.approx(0.1) and s.se == pytest.approx(0.1 / math.sqrt(3))
    assert s.text() == "0.600 ± 0.100" and Spread((0.5,)).std is None


def test_a_clear_win_a_tie_and_a_loss():
    base = [0.50, 0.60, 0.55]
    win = paired("real+cddpm", "real", "pixel_ap", [0.55, 0.66, 0.60], base)  # +0.05, +0.06, +0.05
    assert win.verdict == "beats" and win.wins == 3
    assert win.line("pixel AP") == "real+cddpm beats real on pixel AP: +0.053 ± 0.006, 3 of 3 seeds"
    tie = paired("real+cddpm", "real", "aupro", [0.52, 0.58, 0.56], base)  # +0.02, -0.02, +0.01: noise
    assert tie.verdict == "ties" and tie.wins == 2 and "ties real on aupro" in tie.line()
    loss = paired("real+draem", "real", "pixel_ap", [0.40, 0.52, 0.44], base)
    assert loss.verdict == "loses" and loss.wins == 0
    # a large mean with a larger spread is not a win: 2 SE decides, not the mean
    assert paired("a", "b", "m", [0.3, -0.1, 0.0], [0, 0, 0]).verdict == "ties"
    # a consistent difference too small to show in three digits is a tie too
    assert paired("a", "b", "m", [0.50001, 0.60001], [0.5, 0.6]).verdict == "ties"


def test_paired_needs_the_same_seeds():
    with pytest.raises(ValueError):
        paired("a", "b", "m", [0.1, 0.2], [0.1])


def test_one_seed_uses_the_bootstrap_interval_over_test_images():
    rng = np.random.default_rng(0)
    a_ok, b_ok = rng.random(400) < 0.9, rng.random(400) < 0.6  # per-image success of two runs

    def acc(hits):
        return lambda idx: float(hits[idx].mean())
    low, high = bootstrap_difference(acc(a_ok), acc(b_ok), 400, resamples=300)
    assert 0.2 < low < high < 0.42  # the true difference is about 0.3
    one = paired("a", "b", "accuracy", [a_ok.mean()], [b_ok.mean()], interval=(low, high))
    assert one.verdict == "beats" and "bootstrap interval" in one.line()
    same_low, same_high = bootstrap_difference(acc(a_ok), acc(a_ok[::-1]), 400, resamples=300)
    assert same_low < 0 < same_high
    assert paired("a", "b", "m", [0.7], [0.6]).verdict == "ties"  # one seed and no interval: no call


CURVE_N = [25, 50, 100]
CURVE = [0.40, 0.50, 0.60]  # +0.1 per doubling: straight in log(defects)


def test_worth_between_the_points_of_a_monotone_curve():
    w = worth_in_real_defects(CURVE_N, CURVE, 0.55, labeled=50)
    assert w.position == "on the curve" and w.defects == pytest.approx(50 * math.sqrt(2))
    assert w.ratio == pytest.approx(math.sqrt(2)) and w.extra == pytest.approx(50 * math.sqrt(2) - 50)


def test_worth_past_the_top_is_extrapolated_and_below_the_curve_is_said():
    above = worth_in_real_defects(CURVE_N, CURVE, 0.70, labeled=100)
    assert above.position == "above the curve" and above.defects == pytest.approx(200)
    below = worth_in_real_defects(CURVE_N, CURVE, 0.35, labeled=100)
    assert below.position == "below the curve" and below.defects is None
    flat = worth_in_real_defects(CURVE_N, [0.5, 0.5, 0.49], 0.55, labeled=100)
    assert flat.position == "flat curve" and flat.defects is None
    # a top segment that barely rises gives no number past 4x its defects, however far the score lies
    nearly_flat = [CURVE[0], CURVE[-1] - 0.001, CURVE[-1]]
    far = worth_in_real_defects(CURVE_N, nearly_flat, CURVE[-1] + 0.01, labeled=100)
    assert far.position == "far above the curve" and far.defects is None
    near = worth_in_real_defects(CURVE_N, nearly_flat, CURVE[-1] + 0.0005, labeled=100)
    assert near.position == "above the curve" and CURVE_N[-1] < near.defects <= 4 * CURVE_N[-1]


def test_worth_over_seeds_reads_like_the_report():
    per_seed = tuple(worth_in_real_defects(CURVE_N, np.add(CURVE, d), 0.60 + d + 0.07, labeled=100)
                     for d in (0.0, 0.01, -0.01))
    line = WorthOverSeeds("real+cddpm", per_seed).line()
    assert line.startswith("real+cddpm is worth 1.62x the 100 labeled defects (+62 ± 0 real defects)"), line
    assert "extrapolated" in line
    hurt = WorthOverSeeds("real+draem", (worth_in_real_defects(CURVE_N, CURVE, 0.3, labeled=100),) * 3)
    assert hurt.line() == "real+draem: below the curve in 3 of 3 seeds (no worth in real defects)"


def test_run_seeds_from_report_records_and_the_proofs_comparisons():
    """The proofs rebuild per-seed values from report.json records and judge across validate calls."""
    from benchmarks.proof_neu import compare_fractions
    from defectgen.evaluate.compare import RunSeeds

    several = {"real_images": 10, "metrics": {"pixel_ap": 0.5},
               "spread": {"pixel_ap": {"values": [0.4, 0.5, 0.6]}, "map50": {"values": [0.1, 0.2, 0.3]}}}
    assert RunSeeds.from_record(several, ["pixel_ap", "map50"]).values == {"pixel_ap": [0.4, 0.5, 0.6],
                                                                          "map50": [0.1, 0.2, 0.3]}
    one = RunSeeds.from_record({"real_images": 0, "metrics": {"pixel_ap": 0.7}, "coco": {"map50": 0.3}},
                               ["pixel_ap", "map50"])
    assert one.values == {"pixel_ap": [0.7], "map50": [0.3]} and one.real_images == 0

    def runs(real, mixed, n):
        return RunSeeds({"map50": real, "map": real}, n), RunSeeds({"map50": mixed, "map": mixed}, n)
    seeded = {}
    for pct, n, real, mixed in (("20%", 20, [0.40, 0.42, 0.41], [0.50, 0.51, 0.52]),
                                ("100%", 100, [0.60, 0.61, 0.62], [0.61, 0.60, 0.63])):
        seeded[f"{pct} real"], seeded[f"{pct} real+cddpm"] = runs(real, mixed, n)
    out = compare_fractions(seeded, [0.2, 1.0], "det")
    verdict = {(v["run"], v["metric"]): v["verdict"] for v in out["verdicts"]}
    assert verdict[("20% real+cddpm", "map50")] == "beats" and verdict[("100% real+cddpm", "map50")] == "ties"
    worth = {w["run"]: w for w in out["worth"]}
    assert worth["20% real+cddpm"]["defects"]["mean"] > 20 and len(out["lines"]) == len(out["verdicts"]) + 2
