"""Verdicts a person can act on: a metric over seeds as mean +- std, each set against each baseline as a paired
difference over the same seeds ("beats", "ties", "loses"), a bootstrap interval over test images when there is
one seed, and what a set is worth in real labeled defects, read off the real-only learning curve.

A win is called only when the paired mean difference exceeds twice its standard error (std / sqrt(seeds)); a loss
when it lies below minus twice; anything between is a tie, and so is a difference below 0.001, which the reported
digits do not show (two runs that differ by a few patches in a bank agree on every seed by 1e-5). Learning curves
are read in log(defects), where they are close to straight: a point between two measured shares is interpolated, a
point above the top share is extrapolated along the line through the top two points (and said to be).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

TWO_SE = 2.0  # a difference is called a win or a loss beyond this many standard errors
MIN_DIFFERENCE = 0.001  # ... and only when it shows in the reported digits: a consistent 1e-5 is still a tie


@dataclass(frozen=True)
class Spread:
    """One metric over seeds."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float | None:
        return float(np.std(self.values, ddof=1)) if self.n > 1 else None

    @property
    def se(self) -> float | None:
        return None if self.std is None else self.std / math.sqrt(self.n)

    def text(self, digits: int = 3) -> str:
        return f"{self.mean:.{digits}f}" + ("" if self.std is None else f" ± {self.std:.{digits}f}")

    def to_json(self) -> dict:
        return {"values": list(self.values), "mean": self.mean, "std": self.std, "se": self.se}


@dataclass(frozen=True)
class Paired:
    """`run` minus `baseline` on `metric`, seed by seed (the same seeds, so the seed's own luck cancels)."""

    run: str
    baseline: str
    metric: str
    differences: tuple[float, ...]
    interval: tuple[float, float] | None = None  # one seed: a bootstrap interval over test images

    @property
    def spread(self) -> Spread:
        return Spread(self.differences)

    @property
    def wins(self) -> int:
        return sum(d > 0 for d in self.differences)

    @property
    def verdict(self) -> str:
        """'beats', 'ties' or 'loses'."""
        s = self.spread
        if s.se is not None:
            low, high = s.mean - TWO_SE * s.se, s.mean + TWO_SE * s.se
        elif self.interval is not None:
            low, high = self.interval
        else:
            return "ties"  # one seed and no interval: nothing tells a difference from noise
        if abs(s.mean) < MIN_DIFFERENCE:
            return "ties"
        return "beats" if low > 0 else "loses" if high < 0 else "ties"

    def line(self, metric_name: str | None = None) -> str:
        """'real+cddpm beats real on pixel AP: +0.048 ± 0.012, 3 of 3 seeds'."""
        s = self.spread
        how = f"{s.mean:+.3f}" + ("" if s.std is None else f" ± {s.std:.3f}")
        if s.n > 1:
            how += f", {self.wins} of {s.n} seeds"
        elif self.interval is not None:
            how += f", 95% bootstrap interval [{self.interval[0]:+.3f}, {self.interval[1]:+.3f}] over test images"
        else:
            how += ", one seed"
        return f"{self.run} {self.verdict} {self.baseline} on {metric_name or self.metric}: {how}"

    def to_json(self) -> dict:
        s = self.spread
        return {"run": self.run, "baseline": self.baseline, "metric": self.metric, "differences": list(s.values),
                "mean": s.mean, "std": s.std, "se": s.se, "wins": self.wins, "seeds": s.n,
                "interval": list(self.interval) if self.interval else None, "verdict": self.verdict}


def paired(run: str, baseline: str, metric: str, run_values: Sequence[float], baseline_values: Sequence[float],
           interval: tuple[float, float] | None = None) -> Paired:
    if len(run_values) != len(baseline_values) or not len(run_values):
        raise ValueError("paired differences need the same seeds, at least one, on both sides")
    return Paired(run, baseline, metric, tuple(float(a) - float(b) for a, b in zip(run_values, baseline_values,
                                                                                   strict=True)), interval)


def bootstrap_difference(metric_a: Callable[[np.ndarray], float], metric_b: Callable[[np.ndarray], float],
                         n_images: int, resamples: int = 200, seed: int = 0, level: float = 0.95
                         ) -> tuple[float, float]:
    """The `level` interval of metric_a - metric_b when the test images are drawn again with replacement: each
    function takes the indices of a resampled test set and returns its metric."""
    rng = np.random.default_rng([seed, 11])
    diffs = []
    for _ in range(resamples):
        idx = rng.integers(n_images, size=n_images)
        diffs.append(metric_a(idx) - metric_b(idx))
    diffs = np.asarray([d for d in diffs if np.isfinite(d)])
    if not len(diffs):
        return (-math.inf, math.inf)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(diffs, tail)), float(np.percentile(diffs, 100 - tail))


# ---- worth in real defects -------------------------------------------------------------------------------------

# Past the curve's top share a worth is extrapolated along the top segment (in log defects), at most to this many
# times the top share's defects: a magnetic-tile run 0.004 above a top segment of slope 0.01 read as 48 million.
MAX_EXTRAPOLATION = 4.0

@dataclass(frozen=True)
class Worth:
    """Where a run's score lies on the real-only learning curve: `defects`, the real labeled defects the curve
    needs for that score (None below the curve's lowest point or where the curve does not rise), as a `ratio` of
    the labeled defects the run had, and whether the curve had to be extrapolated past its top share."""

    defects: float | None
    labeled: int
    # "on the curve", "above the curve" (extrapolated), "far above the curve" (past MAX_EXTRAPOLATION),
    # "below the curve", "flat curve"
    position: str

    @property
    def ratio(self) -> float | None:
        return None if self.defects is None else self.defects / self.labeled

    @property
    def extra(self) -> float | None:
        return None if self.defects is None else self.defects - self.labeled


def worth_in_real_defects(curve_defects: Sequence[float], curve_scores: Sequence[float], score: float,
                          labeled: int) -> Worth:
    """How many real labeled defects the real-only curve (`curve_scores` at `curve_defects`, one seed's or the
    mean) needs to reach `score`; `labeled`: the real defects the scored run trained with."""
    x = np.log(np.asarray(curve_defects, float))
    y = np.asarray(curve_scores, float)
    order = np.argsort(x)
    x, y = x[order], np.maximum.accumulate(y[order])  # a dip between shares is noise: read the curve as monotone
    if len(x) < 2 or y[-1] <= y[0]:
        return Worth(None, labeled, "flat curve")
    if score < y[0]:
        return Worth(None, labeled, "below the curve")
    if score <= y[-1]:
        k = int(np.searchsorted(y, score, side="left"))
        if k == 0:
            return Worth(float(np.exp(x[0])), labeled, "on the curve")
        t = (score - y[k - 1]) / (y[k] - y[k - 1]) if y[k] > y[k - 1] else 1.0
        return Worth(float(np.exp(x[k - 1] + t * (x[k] - x[k - 1]))), labeled, "on the curve")
    top = np.flatnonzero(y < y[-1])  # the last point below the top: the top segment's slope
    j = int(top[-1])
    slope = (y[-1] - y[j]) / (x[-1] - x[j])
    reach = x[-1] + (score - y[-1]) / slope
    if reach > x[-1] + np.log(MAX_EXTRAPOLATION):  # a nearly flat top segment: any number would be made up
        return Worth(None, labeled, "far above the curve")
    return Worth(float(np.exp(reach)), labeled, "above the curve")


@dataclass(frozen=True)
class WorthOverSeeds:
    """Per seed the run's worth read off that seed's own curve; the text a person reads."""

    run: str
    per_seed: tuple[Worth, ...]

    @property
    def defects(self) -> Spread | None:
        got = [w.defects for w in self.per_seed if w.defects is not None]
        return Spread(tuple(got)) if len(got) == len(self.per_seed) else None

    def line(self) -> str:
        labeled = self.per_seed[0].labeled
        d = self.defects
        if d is None:
            missing = [w.position for w in self.per_seed if w.defects is None]
            return (f"{self.run}: {' / '.join(sorted(set(missing)))} in {len(missing)} of {len(self.per_seed)} "
                    "seeds (no worth in real defects)")
        extra = Spread(tuple(v - labeled for v in d.values))
        sign = "+" if extra.mean >= 0 else "-"
        pm = "" if extra.std is None else f" ± {extra.std:.0f}"
        extrapolated = any(w.position == "above the curve" for w in self.per_seed)
        return (f"{self.run} is worth {d.mean / labeled:.2f}x the {labeled} labeled defects "
                f"({sign}{abs(extra.mean):.0f}{pm} real defects)"
                f"{', extrapolated past the top share' if extrapolated else ''}")

    def to_json(self) -> dict:
        d = self.defects
        return {"run": self.run, "labeled": self.per_seed[0].labeled,
                "per_seed": [{"defects": w.defects, "position": w.position} for w in self.per_seed],
                "defects": None if d is None else d.to_json(), "line": self.line()}
