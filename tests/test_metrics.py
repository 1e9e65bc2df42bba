"""Each metric against an independent slow reference (scikit-learn; AUPRO by looping over thresholds)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from defectgen import metrics


def reference_aupro(masks: np.ndarray, maps: np.ndarray, limit: float = 0.3) -> float:
    """PRO at every distinct threshold by explicit loops over images and 8-connected regions."""
    regions = []
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m, structure=np.ones((3, 3)))
        regions += [(i, lab == k) for k in range(1, n + 1)]
    normal = ~masks
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        above = maps >= t
        fprs.append((above & normal).sum() / normal.sum())
        pros.append(np.mean([above[i][r].sum() / r.sum() for i, r in regions]))
    fprs, pros = np.array(fprs), np.array(pros)
    # integrate to the limit, closing the last segment by linear interpolation
    area = 0.0
    for k in range(1, len(fprs)):
        x0, x1, y0, y1 = fprs[k - 1], fprs[k], pros[k - 1], pros[k]
        if x0 >= limit:
            break
        if x1 > limit:
            y1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            x1 = limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / limit


def random_case(rng: np.random.Generator, n: int = 6, size: int = 24, levels: int | None = None):
    masks = np.zeros((n, size, size), bool)
    for i in range(n):
        for _ in range(rng.integers(0, 3)):
            y, x, h, w = rng.integers(0, size - 6), rng.integers(0, size - 6), rng.integers(1, 6), rng.integers(1, 6)
            masks[i, y:y + h, x:x + w] = True
    maps = rng.random((n, size, size)) + masks * rng.uniform(0, 1)
    if levels:  # many ties
        maps = np.round(maps * levels) / levels
    return masks, maps.astype(np.float32)


@pytest.mark.parametrize("seed", range(6))
def test_pixel_metrics_match_references(seed):
    rng = np.random.default_rng(seed)
    masks, maps = random_case(rng, levels=[None, 5, 20][seed % 3])
    if not masks.any():
        masks[0, :2, :2] = True
    y, s = masks.ravel(), maps.ravel()
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    assert metrics.average_precision(masks, maps) == pytest.approx(average_precision_score(y, s), abs=1e-9)
    p, r, _ = precision_recall_curve(y, s)
    assert metrics.f1_max(masks, maps) == pytest.approx(np.max(2 * p * r / np.maximum(p + r, 1e-12)), abs=1e-9)
    assert metrics.aupro(masks, maps) == pytest.approx(reference_aupro(masks, maps), abs=1e-9)
    both = metrics.evaluate(masks.any((1, 2)), maps.max((1, 2)), masks, maps)
    assert both["pixel_auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    assert both["aupro"] == pytest.approx(reference_aupro(masks, maps), abs=1e-9)
    assert both["pixel_ap"] == pytest.approx(average_precision_score(y, s), abs=1e-9)


@pytest.mark.parametrize("limit", [0.05, 0.3, 1.0])
def test_aupro_limits(limit):
    masks, maps = random_case(np.random.default_rng(42), n=4, levels=10)
    masks[0, 3:8, 3:8] = True
    assert metrics.aupro(masks, maps, limit) == pytest.approx(reference_aupro(masks, maps, limit), abs=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_image_auroc_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(40) > 0.5
    scores = np.round(rng.random(40) + labels * 0.3, 1)  # ties included
    assert metrics.image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_all_equal_scores():
    rng = np.random.default_rng(0)
    masks, _ = random_case(rng)
    masks[0, 2:5, 2:5] = True
    flat = np.full(masks.shape, 0.7, np.float32)
    assert metrics.pixel_auroc(masks, flat) == pytest.approx(0.5)
    assert metrics.image_auroc([0, 1, 0, 1], [3, 3, 3, 3]) == pytest.approx(0.5)
    assert metrics.average_precision(masks, flat) == pytest.approx(masks.mean())
    assert metrics.aupro(masks, flat) == pytest.approx(reference_aupro(masks, flat))
    assert metrics.aupro(masks, flat) == pytest.approx(0.15)  # the diagonal from (0,0) to (1,1), up to 0.3


def test_no_defect_regions_give_nan_not_errors():
    maps = np.random.default_rng(1).random((3, 16, 16))
    empty = np.zeros_like(maps, bool)
    assert np.isnan(metrics.aupro(empty, maps))
    assert np.isnan(metrics.pixel_auroc(empty, maps))
    assert np.isnan(metrics.average_precision(empty, maps))
    assert np.isnan(metrics.image_auroc([0, 0, 0], [1, 2, 3]))
    result = metrics.evaluate([0, 0, 0], [1, 2, 3], empty, maps)
    assert all(np.isnan(v) for v in result.values() if v is not None)


def test_perfect_and_inverted_maps():
    masks, _ = random_case(np.random.default_rng(3))
    masks[1, 5:9, 5:9] = True
    perfect = masks.astype(np.float32)
    assert metrics.aupro(masks, perfect) == pytest.approx(1.0)
    assert metrics.pixel_auroc(masks, perfect) == pytest.approx(1.0)
    assert metrics.aupro(masks, -perfect) == pytest.approx(0.0)

