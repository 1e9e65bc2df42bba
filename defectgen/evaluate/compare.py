"""The runs of one validation compared: each run's results over seeds as one report record (mean, with the spread
beside it), the paired verdict of every run that holds the synthetic set against every baseline, a bootstrap
interval over test images where there is one seed, and each run's worth in real defects on the real-only learning
curve (`validate --curve`). The arithmetic of verdicts lives in `defectgen.evaluate.verdicts`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from defectgen.evaluate.data import TestSet
from defectgen.evaluate.runs import RunResult
from defectgen.evaluate.verdicts import (
    Paired,
    Spread,
    WorthOverSeeds,
    bootstrap_difference,
    paired,
    worth_in_real_defects,
)
from defectgen.metrics import image_auroc

SET_RUNS = ("synthetic", "real+synthetic")  # the runs that hold the set under test
CURVE_PREFIX = "real@"
METRIC_NAMES = {"pixel_ap": "pixel AP", "aupro": "AUPRO@0.3", "image_auroc": "image AUROC", "map50": "mAP@0.5",
                "map": "mAP@[.5:.95]"}
BOOTSTRAPPED = ("image_auroc", "pixel_ap")  # one seed: the metrics with an interval over resampled test images


def curve_run(share: float) -> str:
    """The name of the real-only run on `share` of the labeled defects ('real' at 100%)."""
    return "real" if share >= 1.0 else f"{CURVE_PREFIX}{share * 100:g}%"


def headline_metrics(scored_by_boxes: bool, box_detector: bool) -> list[str]:
    """What verdicts are given on: box mAP for a box detector, pixel AP, AUPRO and image AUROC otherwise (and
    mAP@0.5 beside them where boxes are scored too). The first one places runs on the learning curve."""
    if box_detector:
        return ["map50", "map"]
    return ["pixel_ap", "aupro", "image_auroc"] + (["map50"] if scored_by_boxes else [])


def value(result: RunResult, metric: str) -> float:
    if metric in ("map50", "map"):
        return float(result.coco[metric]) if result.coco else float("nan")
    return float(result.metrics[metric])


@dataclass
class RunSeeds:
    """What verdicts and worth need of a run: each headline metric's value seed by seed (the same seeds for every
    run), and how many real labeled defects it trained on."""

    values: dict[str, list[float]]
    real_images: int

    @classmethod
    def of(cls, results: Sequence[RunResult], metrics: Sequence[str]) -> RunSeeds:
        return cls({m: [value(r, m) for r in results] for m in metrics}, int(results[0].real_images))

    @classmethod
    def from_record(cls, run: dict[str, Any], metrics: Sequence[str]) -> RunSeeds:
        """From a run's report.json record (`record`): its `spread` over seeds, or its one seed's metrics."""
        if "spread" in run:
            return cls({m: list(run["spread"][m]["values"]) for m in metrics}, int(run["real_images"]))
        coco = run.get("coco") or {}
        return cls({m: [float(coco.get(m, np.nan)) if m in ("map50", "map") else float(run["metrics"][m])]
                    for m in metrics}, int(run["real_images"]))


# ---- one record per run ----------------------------------------------------------------------------------------

def _mean_tree(trees: Sequence[Any]) -> Any:
    """The mean of numbers found at the same place in each of `trees` (nested dicts); other leaves: the first's."""
    first = trees[0]
    if isinstance(first, dict):
        return {k: _mean_tree([t[k] for t in trees]) for k in first if all(isinstance(t, dict) and k in t
                                                                            for t in trees)}
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        vals = [float(t) if t is not None else np.nan for t in trees]
        return float(np.mean(vals))
    return first


def record(results: Sequence[RunResult], seeds: Sequence[int], metrics: Sequence[str]) -> dict[str, Any]:
    """report.json's record of a run over its seeds: the first seed's record with metrics, per-class metrics and
    box mAP averaged; with several seeds also `spread` (each headline metric's values, mean, std, standard error)
    and `per_seed` (each seed's metrics and box mAP)."""
    out = results[0].to_json()
    if len(results) == 1:
        return out
    jsons = [r.to_json() for r in results]
    for key in ("metrics", "per_class", "coco"):
        if key in out:
            out[key] = _mean_tree([j[key] for j in jsons])
    out["spread"] = {m: Spread(tuple(value(r, m) for r in results)).to_json() for m in metrics}
    out["per_seed"] = [{"seed": s, "metrics": j["metrics"],
                        **({"map50": j["coco"]["map50"], "map": j["coco"]["map"]} if "coco" in j else {})}
                       for s, j in zip(seeds, jsons, strict=True)]
    return out


# ---- verdicts --------------------------------------------------------------------------------------------------

def pairs_to_judge(runs: Sequence[str]) -> list[tuple[str, str]]:
    """(run holding the set, baseline) for every run holding the synthetic set against every other run that is
    not a lower point of the learning curve."""
    sets = [r for r in runs if r in SET_RUNS]
    others = [r for r in runs if r not in SET_RUNS and not r.startswith(CURVE_PREFIX) and not r.endswith("+pseudo")]
    return [(s, b) for s in sets for b in others]


@dataclass
class KeptMaps:
    """One seed's anomaly maps (at each test image's own size) and image scores of a run, for the bootstrap."""

    maps: list[np.ndarray]
    scores: np.ndarray


def verdicts(runs: dict[str, RunSeeds], metrics: Sequence[str], test_set: TestSet | None = None,
             kept: dict[str, KeptMaps] | None = None, seed: int = 0,
             pairs: Sequence[tuple[str, str]] | None = None) -> list[Paired]:
    """The paired verdict of each pair (default `pairs_to_judge`) on each metric; with one seed, the metrics of
    `BOOTSTRAPPED` get an interval over resampled test images (from `kept` maps)."""
    out = []
    bins = _PixelBins(test_set, kept) if kept and test_set is not None else None
    for run, base in pairs if pairs is not None else pairs_to_judge(list(runs)):
        for m in metrics:
            a, b = runs[run].values[m], runs[base].values[m]
            if not all(np.isfinite(a + b)):
                continue
            interval = None
            if len(a) == 1 and bins is not None and m in BOOTSTRAPPED:
                interval = bootstrap_difference(bins.metric(run, m), bins.metric(base, m), len(test_set.labels),
                                                seed=seed)
            out.append(paired(run, base, m, a, b, interval))
    return out


class _PixelBins:
    """Per test image, histograms of each run's map values over its defect and its normal pixels (1024 bins at the
    run's quantiles), so that pixel AP of a resampled test set is a sum of rows, not a sort of millions of pixels."""

    def __init__(self, test_set: TestSet, kept: dict[str, KeptMaps], bins: int = 1024):
        self.labels = np.asarray(test_set.labels, bool)
        self.kept = kept
        self.hist: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name, k in kept.items():
            sample = np.concatenate([m.ravel()[:: max(1, m.size // 4096)] for m in k.maps])
            edges = np.unique(np.quantile(sample, np.linspace(0, 1, bins + 1)))
            edges[0], edges[-1] = -np.inf, np.inf
            pos = np.stack([np.histogram(m[t], edges)[0] for m, t in zip(k.maps, test_set.masks, strict=True)])
            neg = np.stack([np.histogram(m[~t], edges)[0] for m, t in zip(k.maps, test_set.masks, strict=True)])
            self.hist[name] = (pos, neg)

    def metric(self, run: str, metric: str):
        if metric == "image_auroc":
            scores = self.kept[run].scores
            return lambda idx: image_auroc(self.labels[idx], scores[idx]) if self.labels[idx].any() and \
                not self.labels[idx].all() else np.nan
        pos, neg = self.hist[run]
        return lambda idx: _binned_ap(pos[idx].sum(0), neg[idx].sum(0))


def _binned_ap(pos: np.ndarray, neg: np.ndarray) -> float:
    """Average precision from counts of defect and normal pixels per score bin (thresholds at bin edges)."""
    tp, fp = np.cumsum(pos[::-1]), np.cumsum(neg[::-1])
    if tp[-1] == 0:
        return float("nan")
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))


# ---- worth in real defects -------------------------------------------------------------------------------------

def worth(runs: dict[str, RunSeeds], metric: str, curve: Sequence[str] | None = None) -> list[WorthOverSeeds]:
    """Each run that trained on real labeled defects (but the curve's own runs), placed seed by seed on that
    seed's real-only curve (default: the `real@N%` runs and `real`) by `metric`."""
    curve = list(curve) if curve is not None else \
        [r for r in runs if r.startswith(CURVE_PREFIX)] + (["real"] if "real" in runs else [])
    if len(curve) < 2:
        return []
    out = []
    for run, seeds in runs.items():
        if run in curve or seeds.real_images == 0 or run.endswith("+pseudo"):
            continue
        xs = [runs[c].real_images for c in curve]
        per = [worth_in_real_defects(xs, [runs[c].values[metric][k] for c in curve], v, seeds.real_images)
               for k, v in enumerate(seeds.values[metric])]
        out.append(WorthOverSeeds(run, tuple(per)))
    return out


def summary_lines(judged: Sequence[Paired], worths: Sequence[WorthOverSeeds], curve: dict[str, Any] | None
                  ) -> list[str]:
    """report.md's opening: the verdict lines, then what each run is worth in real defects."""
    lines = [f"- {p.line(METRIC_NAMES.get(p.metric, p.metric))}" for p in judged]
    lines += [f"- {w.line()} ({METRIC_NAMES.get(curve['metric'], curve['metric'])})" for w in worths] if curve else []
    return lines
