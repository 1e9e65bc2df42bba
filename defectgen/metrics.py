"""The metrics of the field: image and pixel AUROC, AUPRO (FPR limit 0.3), F1-max, average precision, and
COCO box mAP (pycocotools' COCOeval) for detectors that output boxes.

All curves come from one descending sort of the scores, cut at each distinct score (ties share a threshold, so
all-equal scores give AUROC 0.5 and AP = the positive rate, as scikit-learn does). A 200-image test set at
256x256 (13M pixels) is one argsort: a few seconds (benchmarks/metrics_speed.py measures it).

Undefined values are NaN rather than errors: AUROC with one class present, AUPRO without any defect region or
without any normal pixel.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

# the keys of `evaluate` with masks and maps, in the order reports list them
METRICS = ("image_auroc", "pixel_auroc", "aupro", "pixel_ap", "image_f1_max", "pixel_f1_max")

__all__ = [
    "METRICS", "aupro", "average_precision", "coco_map", "evaluate", "f1_max", "image_auroc", "pixel_auroc",
    "pro_curve", "roc_curve",
]


def _as_flat(values) -> np.ndarray:
    if isinstance(values, np.ndarray):
        return values.ravel()
    return np.concatenate([np.asarray(v).ravel() for v in values]) if len(values) else np.zeros(0)


def _counts(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None):
    """Cumulative (true positives, false positives) at each distinct threshold, highest threshold first;
    with `weights`, the positive count is replaced by cumulative weight (used for PRO)."""
    scores = np.asarray(scores)
    if scores.dtype not in (np.float32, np.float64):
        scores = scores.astype(np.float64)
    order = np.argsort(-scores)  # ties need no stable order: counts are read only where the score changes
    s = scores[order]
    y = labels[order]
    # the last index of each run of equal scores: one threshold per distinct value
    cut = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tp = np.cumsum(y, dtype=np.float64)[cut]
    fp = np.cumsum(~y, dtype=np.float64)[cut]
    extra = np.cumsum(weights[order], dtype=np.float64)[cut] if weights is not None else None
    return tp, fp, s[cut], extra


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), starting at (0, 0). Labels bool (True = defect), any shape, or a list of arrays."""
    y = _as_flat(labels).astype(bool)
    tp, fp, thr, _ = _counts(y, _as_flat(scores))
    n_pos, n_neg = max(y.sum(), 1), max((~y).sum(), 1)
    return np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos], np.r_[np.inf, thr]


def _auroc(y: np.ndarray, s: np.ndarray) -> float:
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        return float("nan")
    tp, fp, _, _ = _counts(y, s)
    tpr, fpr = np.r_[0.0, tp / n_pos], np.r_[0.0, fp / (y.size - n_pos)]
    return float(np.trapezoid(tpr, fpr))


def image_auroc(labels, scores) -> float:
    """Area under the ROC of image scores; labels True for defect images. NaN if only one class is present."""
    return _auroc(np.asarray(labels, dtype=bool).ravel(), np.asarray(scores, dtype=np.float64).ravel())


def pixel_auroc(masks, maps) -> float:
    """Area under the ROC over all pixels of all images; masks bool (True = defect), maps the anomaly maps."""
    return _auroc(_as_flat(masks).astype(bool), _as_flat(maps))


def _pr(labels, scores) -> tuple[np.ndarray, np.ndarray] | None:
    """(precision, recall) at each distinct threshold, highest first; None without positives."""
    y, s = _as_flat(labels).astype(bool), _as_flat(scores)
    if not y.any():
        return None
    tp, fp, _, _ = _counts(y, s)
    return tp / (tp + fp), tp / max(int(y.sum()), 1)


def _ap(precision: np.ndarray, recall: np.ndarray) -> float:
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _best_f1(precision: np.ndarray, recall: np.ndarray) -> float:
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0.0)
    return float(f1.max())


def average_precision(labels, scores) -> float:
    """Average precision as scikit-learn defines it: sum over thresholds of (R_n - R_{n-1}) P_n. NaN without
    positives."""
    pr = _pr(labels, scores)
    return float("nan") if pr is None else _ap(*pr)


def f1_max(labels, scores) -> float:
    """The best F1 over all thresholds. NaN without positives."""
    pr = _pr(labels, scores)
    return float("nan") if pr is None else _best_f1(*pr)


def _region_weights(masks: Sequence[np.ndarray]) -> tuple[np.ndarray, int]:
    """Per pixel: 1 / (number of regions * region area) inside a ground-truth region (8-connected, per image),
    0 outside; summing these over the pixels above a threshold gives the mean per-region overlap (PRO)."""
    weights, n_regions, labelled = [], 0, []
    for m in masks:
        m = np.asarray(m, dtype=bool)
        if m.any():
            n, lab = cv2.connectedComponents(m.astype(np.uint8), connectivity=8)
            area = np.bincount(lab.ravel(), minlength=n).astype(np.float64)
            inv = np.zeros(n)
            inv[1:] = 1.0 / area[1:]
            labelled.append(inv[lab].ravel())
            n_regions += n - 1
        else:
            labelled.append(np.zeros(m.size))
    for w in labelled:
        weights.append(w / max(n_regions, 1))
    return (np.concatenate(weights) if weights else np.zeros(0)), n_regions


def pro_curve(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, pro) at every distinct threshold, starting at (0, 0). FPR over all normal pixels of all images;
    PRO = mean over all ground-truth regions of the fraction of the region above the threshold."""
    masks = [np.asarray(m, dtype=bool) for m in masks]
    y = _as_flat(masks)
    weights, _ = _region_weights(masks)
    _, fp, _, pro = _counts(y, _as_flat(maps), weights)
    return np.r_[0.0, fp / max(int((~y).sum()), 1)], np.r_[0.0, pro]


def _area_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under y(x) from 0 to `limit`, interpolating at the limit (x ascending)."""
    keep = x <= limit
    xs, ys = x[keep], y[keep]
    if xs[-1] < limit and keep.sum() < x.size:
        i = int(keep.sum())  # first point past the limit
        t = (limit - x[i - 1]) / (x[i] - x[i - 1]) if x[i] > x[i - 1] else 0.0
        xs, ys = np.r_[xs, limit], np.r_[ys, y[i - 1] + t * (y[i] - y[i - 1])]
    return float(np.trapezoid(ys, xs))


def aupro(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray], fpr_limit: float = 0.3) -> float:
    """Area under the PRO curve up to `fpr_limit`, divided by `fpr_limit` (MVTec AD's AUPRO, 1.0 is perfect).
    NaN without any defect region or without any normal pixel."""
    masks = [np.asarray(m, dtype=bool) for m in masks]
    y = _as_flat(masks)
    if not y.any() or y.all():
        return float("nan")
    fpr, pro = pro_curve(masks, maps)
    return _area_to(fpr, pro, fpr_limit) / fpr_limit


def evaluate(image_labels, image_scores, masks=None, maps=None, fpr_limit: float = 0.3) -> dict[str, float]:
    """Every metric at once: image AUROC and F1-max, and with masks and maps pixel AUROC, AUPRO, pixel AP and
    pixel F1-max."""
    result = {
        "image_auroc": image_auroc(image_labels, image_scores),
        "image_f1_max": f1_max(np.asarray(image_labels, bool), np.asarray(image_scores, np.float64)),
    }
    if masks is not None and maps is not None:
        result.update(_pixel_metrics([np.asarray(m, dtype=bool) for m in masks], maps, fpr_limit))
    return result


def _pixel_metrics(masks: list[np.ndarray], maps, fpr_limit: float) -> dict[str, float]:
    """Pixel AUROC, AUPRO, AP and F1-max from a single sort of all pixels."""
    nan = float("nan")
    y = _as_flat(masks)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        return {"pixel_auroc": nan, "aupro": nan, "pixel_ap": nan if n_pos == 0 else 1.0,
                "pixel_f1_max": nan if n_pos == 0 else 1.0}
    weights, _ = _region_weights(masks)
    tp, fp, _, pro = _counts(y, _as_flat(maps), weights)
    tpr, fpr = tp / n_pos, fp / (y.size - n_pos)
    precision = tp / (tp + fp)
    return {
        "pixel_auroc": float(np.trapezoid(np.r_[0.0, tpr], np.r_[0.0, fpr])),
        "aupro": _area_to(np.r_[0.0, fpr], np.r_[0.0, pro], fpr_limit) / fpr_limit,
        "pixel_ap": _ap(precision, tpr),
        "pixel_f1_max": _best_f1(precision, tpr),
    }


def coco_map(ground_truth: Sequence[Sequence[dict]], detections: Sequence[Sequence[dict]],
             classes: Sequence[str] | None = None) -> dict:
    """COCO box mAP with pycocotools' COCOeval (area 'all', up to 100 detections per image).

    ground_truth: per image a list of {"bbox": [x, y, w, h], "class": name} (an empty list for a normal image);
    detections: per image a list of {"bbox", "score", "class"}; classes: the categories (default: those of the
    ground truth). Returns map50 (mAP@0.5), map (mAP@[.5:.95]), the class-agnostic pair (every box one class),
    per_class {name: {map50, map, boxes}} (NaN for a class with no ground-truth box), and how many detections
    named a class outside `classes` (dropped from the class-aware figures, kept in the class-agnostic ones)."""
    if len(ground_truth) != len(detections):
        raise ValueError("one detection list per ground-truth image is needed")
    names = list(classes) if classes is not None else sorted({b["class"] for g in ground_truth for b in g})
    cat = {c: i + 1 for i, c in enumerate(names)}
    gt_anns, dt_anns, unknown = _coco_annotations(ground_truth, detections, cat)
    nan = float("nan")
    per_class = {c: {"map50": nan, "map": nan, "boxes": sum(b["class"] == c for g in ground_truth for b in g)}
                 for c in names}
    result = {"map50": nan, "map": nan, "agnostic_map50": nan, "agnostic_map": nan, "per_class": per_class,
              "detections": len(dt_anns), "unknown_class_detections": unknown}
    if not gt_anns:
        return result
    known = [d for d in dt_anns if d["category_id"]]
    if dt_anns:
        _cocoeval(result, names, cat, len(ground_truth), gt_anns, dt_anns, known)
    for keys in ([("map50", "map", "agnostic_map50", "agnostic_map")] if not dt_anns else []) + \
            ([("map50", "map")] if dt_anns and not known else []):
        # no detections (of a known class): pycocotools cannot load an empty result; every class scores 0
        result.update(dict.fromkeys(keys, 0.0))
        for c in names:
            if per_class[c]["boxes"]:
                per_class[c].update(map50=0.0, map=0.0)
    return result


def _coco_annotations(ground_truth, detections, cat: dict[str, int]) -> tuple[list[dict], list[dict], int]:
    """COCO ground-truth and detection annotations (images numbered from 1; a detection of an unknown class gets
    category 0), and how many detections named an unknown class."""
    gt_anns, dt_anns, unknown = [], [], 0
    for i, boxes in enumerate(ground_truth):
        for b in boxes:
            if b["class"] not in cat:
                raise ValueError(f"ground-truth class {b['class']!r} is not among the classes")
            x, y, w, h = (float(v) for v in b["bbox"])
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": i + 1, "category_id": cat[b["class"]],
                            "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    for i, boxes in enumerate(detections):
        for b in boxes:
            unknown += b["class"] not in cat
            dt_anns.append({"image_id": i + 1, "category_id": cat.get(b["class"], 0),
                            "bbox": [float(v) for v in b["bbox"]], "score": float(b["score"])})
    return gt_anns, dt_anns, unknown


def _cocoeval(result: dict, names: list[str], cat: dict[str, int], n_images: int, gt_anns: list[dict],
              dt_anns: list[dict], known: list[dict]) -> None:
    """COCOeval class-aware (on `known` detections) and class-agnostic (on all), into `result`."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def mean_ap(p: np.ndarray) -> float:
        p = p[p > -1]  # -1: no ground truth for that category
        return float(p.mean()) if p.size else float("nan")

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO()
        gt.dataset = {"images": [{"id": i + 1} for i in range(n_images)], "annotations": gt_anns,
                      "categories": [{"id": cat[c], "name": c} for c in names]}
        gt.createIndex()
        for agnostic in (False, True):
            anns = dt_anns if agnostic else known
            if not anns:
                continue
            ev = COCOeval(gt, gt.loadRes([dict(d, category_id=d["category_id"] or 1) for d in anns]), "bbox")
            ev.params.useCats = 0 if agnostic else 1
            ev.evaluate()
            ev.accumulate()
            # precision: [IoU thresholds, recall points, classes, area ranges, max detections]; area 'all' = 0,
            # 100 detections = last; the same cells COCOeval.summarize() averages for stats[0] and stats[1]
            prec = ev.eval["precision"][:, :, :, 0, -1]
            key = "agnostic_" if agnostic else ""
            result[key + "map"], result[key + "map50"] = mean_ap(prec), mean_ap(prec[0])
            if not agnostic:
                for k, cid in enumerate(ev.params.catIds):
                    result["per_class"][names[cid - 1]].update(map=mean_ap(prec[:, :, k]), map50=mean_ap(prec[0, :, k]))
