"""How good is a generated defect set, before any detector is trained on it (`defectgen inspect --against REAL`).

- **KID** (kernel inception distance, here on the detector backbone's features): squared MMD with the cubic
  polynomial kernel k(x, y) = (x.y / d + 1)^3 between crops around generated defects and crops around real
  defects, unbiased, averaged over random subsets. 0 means the two sets are indistinguishable to the features;
  lower is better. Unlike FID it is unbiased for small sets, which is all a defect set ever is.
- **Diversity**: mean pairwise distance between the L2-normalised features of the generated crops (in the spirit of
  IC-LPIPS): 0 when every sample is the same defect; higher is more varied.
- **Realism**: a memory bank of the patch features inside the generated masks *only*, less those that look like
  the normal surface around them (ExDD's leave-one-image-out filter), and the real test set scored by the negative
  distance of each patch to that bank. If real defects look like the generated ones they land close to the bank
  and score high: the I-AUROC / P-AUROC of that score against the real labels say how much the generated defects
  resemble real ones (0.5 = no more than normal surface does, as a set of no-op "defects" scores; below 0.5 =
  less).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from defectgen.errors import DefectgenError, warn
from defectgen.io.datasets import open_dataset
from defectgen.io.images import fit_mask, fit_uint8, resize, to_float
from defectgen.io.resolution import parse_resolution
from defectgen.io.sample import Box


def defect_crop(image: np.ndarray, mask: np.ndarray, size: int = 64, pad: float = 0.5) -> np.ndarray:
    """A square crop around the mask's extent (grown by `pad` of its size), resized to size x size, float [0, 1]."""
    box = Box.from_mask(mask)
    h, w = mask.shape
    if box is None:
        raise ValueError("empty mask")
    side = max(box.width, box.height) * (1 + 2 * pad)
    side = int(min(max(side, 16), h, w))
    cy, cx = (box.y0 + box.y1) / 2, (box.x0 + box.x1) / 2
    y0 = int(np.clip(round(cy - side / 2), 0, h - side))
    x0 = int(np.clip(round(cx - side / 2), 0, w - side))
    crop = to_float(image[y0:y0 + side, x0:x0 + side])
    return resize(crop.reshape(side, side, -1), size, size)


@torch.no_grad()
def crop_features(backbone, crops: list[np.ndarray], strides=(8, 16), batch: int = 32) -> np.ndarray:
    """N x D: each crop's multi-scale backbone features, average-pooled over space."""
    from defectgen.detect.features import image_features

    out = [image_features(backbone, crops[i:i + batch], strides, batch).mean(dim=(2, 3)).cpu().numpy()
           for i in range(0, len(crops), batch)]
    return np.concatenate(out).astype(np.float64)


def kid(x: np.ndarray, y: np.ndarray, subsets: int = 20, subset_size: int | None = None, seed: int = 0) \
        -> tuple[float, float]:
    """Unbiased squared MMD with the cubic polynomial kernel, mean and std over random subsets."""
    if len(x) < 2 or len(y) < 2:
        raise ValueError("KID needs at least two samples on each side")
    m = min(len(x), len(y), subset_size or 100)
    d = x.shape[1]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        a = x[rng.choice(len(x), m, replace=False)]
        b = y[rng.choice(len(y), m, replace=False)]
        kaa = (a @ a.T / d + 1) ** 3
        kbb = (b @ b.T / d + 1) ** 3
        kab = (a @ b.T / d + 1) ** 3
        mmd = (kaa.sum() - np.trace(kaa)) / (m * (m - 1)) + (kbb.sum() - np.trace(kbb)) / (m * (m - 1)) \
            - 2 * kab.mean()
        values.append(mmd)
    return float(np.mean(values)), float(np.std(values))


def diversity(features: np.ndarray) -> float:
    """Mean pairwise Euclidean distance between L2-normalised feature vectors (0..2)."""
    if len(features) < 2:
        return 0.0
    f = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    d = np.sqrt(np.maximum(2 - 2 * f @ f.T, 0))
    n = len(f)
    return float(d.sum() / (n * (n - 1)))


# Realism's default: a generated patch as close to normal surface as this share of normal patches is dropped.
REALISM_NORMAL_QUANTILE = 0.99


class _NearGenerated:
    """Realism's scorer, shaped like a detector (fit / predict / image_scores, so `Tiled` can run it): a bank of
    the patch features inside the generated masks; each test patch scores minus its distance to the bank.

    A patch inside a mask that looks like the normal surface says nothing about the defects (a faint defect's
    rim, a no-op inpaint): like ExDD's positive bank, the bank keeps only the inside patches farther from the
    generated images' own surface (patches at least one patch away from every mask, other images only) than
    `normal_quantile` of that surface's patches are from each other (leave one image out). A set whose defects
    all look like surface keeps no patch and scores 0.5."""

    def __init__(self, backbone, strides=(8, 16), sigma: float = 4.0,
                 normal_quantile: float | None = REALISM_NORMAL_QUANTILE, seed: int = 0):
        if normal_quantile is not None and not 0 <= normal_quantile < 1:
            raise ValueError(f"normal_quantile must lie in [0, 1), got {normal_quantile}")
        self.backbone, self.strides, self.sigma = backbone, tuple(strides), float(sigma)
        self.normal_quantile, self.seed = normal_quantile, int(seed)
        self.bank = None
        self.counts: dict[str, int] = {}

    def fit(self, normals, defects, masks, progress: bool = False, **_) -> _NearGenerated:
        from torch.nn.functional import max_pool2d

        from defectgen.detect.features import (
            image_features,
            inside_patches,
            leave_one_out_quantile,
            mask_cover,
            nearest_distance,
        )

        feats = image_features(self.backbone, defects, self.strides)
        n, d, h, w = feats.shape
        cover = mask_cover(feats, masks)
        flat = feats.permute(0, 2, 3, 1).reshape(-1, d)
        groups = torch.arange(n, device=flat.device).repeat_interleave(h * w)
        inside = inside_patches(cover).flatten()
        surface = (max_pool2d(cover[:, None], 3, stride=1, padding=1)[:, 0] == 0).flatten()
        bank, bank_groups = flat[inside], groups[inside]
        if bank.shape[0] == 0:
            raise DefectgenError(None, "the generated masks cover no backbone patch")
        self.counts = {"inside": int(bank.shape[0]), "surface": int(surface.sum())}
        if self.normal_quantile is not None and surface.any():
            normal, normal_groups = flat[surface], groups[surface]
            limit = leave_one_out_quantile(normal, normal_groups, normal, normal_groups, self.normal_quantile,
                                           self.seed)
            bank = bank[nearest_distance(bank, normal, query_groups=bank_groups, bank_groups=normal_groups) > limit]
        self.counts["kept"] = int(bank.shape[0])
        self.bank = bank
        return self

    @torch.no_grad()
    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from defectgen.detect.features import image_features, nearest_distance, smooth_maps, upsample

        maps = []
        for i in range(0, len(images), 16):
            feats = image_features(self.backbone, images[i:i + 16], self.strides)
            n, d, h, w = feats.shape
            if self.bank.shape[0] == 0:  # nothing unlike surface: every patch scores the same
                score = torch.zeros(n, h, w, device=feats.device)
            else:
                score = -nearest_distance(feats.permute(0, 2, 3, 1).reshape(-1, d), self.bank).view(n, h, w)
            maps.append(smooth_maps(upsample(score, tuple(images.shape[1:3])).cpu().numpy(), self.sigma))
        maps = np.concatenate(maps)
        return maps, self.image_scores(maps)

    def image_scores(self, maps) -> np.ndarray:
        return np.asarray([float(np.max(m)) for m in maps], np.float32)


def realism(backbone, generated: list[np.ndarray], masks: list[np.ndarray], test_images: list[np.ndarray],
            test_labels: np.ndarray, test_masks: list[np.ndarray] | None, resolution: int | str = 256,
            strides=(8, 16), sigma: float = 4.0, tile: int | None = None,
            normal_quantile: float | None = REALISM_NORMAL_QUANTILE, seed: int = 0) -> dict[str, Any]:
    """I-AUROC / P-AUROC of the real test set scored by closeness to the generated defects' patches (those that
    do not look like normal surface: see `_NearGenerated`; None keeps every patch inside the masks), and the
    patch counts: inside the masks, surface, kept.

    resolution: the model input (`parse_resolution`, multiples of 16: the features are at strides 8 and 16), the
    one the test set's most common image size gives, for the generated images too (so both are seen at one
    scale). tile: instead, both stay at native scale, the bank from a tile around each generated defect and the
    test images scored in overlapping tiles (`Tiled`). Maps are compared at each test image's own size with its
    original mask."""
    from defectgen.detect.tiling import Tiled, restore_maps
    from defectgen.metrics import evaluate

    scorer = _NearGenerated(backbone, strides, sigma, normal_quantile, seed)
    sizes = [t.shape[:2] for t in test_images]
    if tile is not None:
        model = Tiled(scorer, tile, seed).fit([], [fit_uint8(g, *g.shape[:2], 3) for g in generated], masks)
        maps, scores = model.predict([fit_uint8(t, *t.shape[:2], 3) for t in test_images])
    else:
        h, w = parse_resolution(resolution, multiple=16).for_sizes(sizes)
        scorer.fit([], np.stack([fit_uint8(g, h, w, 3) for g in generated]), [fit_mask(m, h, w) for m in masks])
        maps, scores = scorer.predict(np.stack([fit_uint8(t, h, w, 3) for t in test_images]))
        maps = restore_maps(maps, sizes)
    result = evaluate(test_labels, scores, test_masks, maps if test_masks is not None else None)
    return {"image_auroc": result.get("image_auroc"), "pixel_auroc": result.get("pixel_auroc"),
            "normal_quantile": normal_quantile, "patches": scorer.counts}


def per_class_kid(gen_feats: np.ndarray, gen_classes: list[str | None], real_feats: np.ndarray,
                  real_classes: list[str | None], seed: int = 0) -> dict[str, dict[str, float]]:
    """KID of each class's generated crops against the same class's real crops (classes with two or more on
    each side; a class-conditional generator should be close to its own class, not only to the pool)."""
    out = {}
    for c in sorted({c for c in gen_classes if c is not None} & {c for c in real_classes if c is not None}):
        g = gen_feats[[i for i, x in enumerate(gen_classes) if x == c]]
        r = real_feats[[i for i, x in enumerate(real_classes) if x == c]]
        if len(g) >= 2 and len(r) >= 2:
            mean, std = kid(g, r, seed=seed)
            out[c] = {"kid": mean, "kid_std": std, "generated": len(g), "real": len(r)}
    return out


def class_fidelity(ref_feats: np.ndarray, ref_classes: list[str], feats: np.ndarray, classes: list[str],
                   k: int = 5) -> dict[str, Any]:
    """Does a generated defect of class c look like real class-c defects? A k-nearest-neighbour vote (cosine, on
    the reference set: real labeled crops) names each crop's class; returns the accuracy, each class's recall and
    the predicted-class histogram (the class balance of the set as a classifier trained on real defects sees it)."""
    def unit(x):
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    names = sorted(set(ref_classes))
    ref_idx = np.array([names.index(c) for c in ref_classes])
    sims = unit(feats) @ unit(ref_feats).T
    nearest = np.argsort(-sims, axis=1)[:, :k]
    votes = np.stack([np.bincount(ref_idx[row], minlength=len(names)) for row in nearest])
    predicted = [names[int(i)] for i in votes.argmax(1)]
    hits = np.array([p == c for p, c in zip(predicted, classes, strict=True)])
    recall = {c: float(hits[[i for i, x in enumerate(classes) if x == c]].mean()) for c in sorted(set(classes))}
    return {"accuracy": float(hits.mean()), "recall": recall,
            "predicted": {c: predicted.count(c) for c in names}, "requested": {c: classes.count(c) for c in recall}}


def _defects(dataset, limit: int | None, seed: int):
    samples = [s for s in dataset if s.mask is not None and s.mask.any() or s.boxes]
    if limit and len(samples) > limit:
        idx = np.random.default_rng(seed).choice(len(samples), limit, replace=False)
        samples = [samples[i] for i in sorted(idx)]
    return samples


def quality_report(generated: str | Path, real: str | Path, backbone: str | None = None,
                   resolution: int | str = 256, crop: int = 64, max_samples: int | None = 200, seed: int = 0,
                   device: str | None = None, tile: int | None = None,
                   normal_quantile: float | None = REALISM_NORMAL_QUANTILE) -> dict[str, Any]:
    """KID, diversity and realism of the generated set at `generated` against the real defects at `real`
    (an MVTec folder: its test split; or any dataset with masks or boxes). Realism works at `resolution`, or
    with `tile` in tiles at native scale (see `realism`); both are checked before anything is read. backbone: see
    `resolve_backbone`. normal_quantile: realism's surface filter (see `realism`; None turns it off)."""
    from defectgen.detect.tiling import check_tile

    parse_resolution(resolution, multiple=16)
    check_tile(tile)
    from defectgen.detect.backbone import TINY_WARNING, is_pretrained, load_backbone, resolve_backbone
    from defectgen.runtime import pick_device

    gen_ds = open_dataset(generated)
    real_ds = open_dataset(real)
    if real_ds.format == "mvtec":
        real_ds = real_ds.select(split="test")
    gen = _defects(gen_ds, max_samples, seed)
    real_defects = _defects(real_ds.select(normal=False), max_samples, seed)
    if len(gen) < 2:
        raise DefectgenError(generated, "needs at least two generated samples with masks")
    if len(real_defects) < 2:
        raise DefectgenError(real, "needs at least two real defects with masks or boxes")
    backbone = resolve_backbone(backbone)
    net = load_backbone(backbone, pick_device(device))
    if not is_pretrained(backbone):
        warn(TINY_WARNING)
    gen_feats = crop_features(net, [defect_crop(s.image, s.defect_mask(), crop) for s in gen])
    real_feats = crop_features(net, [defect_crop(s.image, s.defect_mask(), crop) for s in real_defects])
    kid_mean, kid_std = kid(gen_feats, real_feats, seed=seed)
    report: dict[str, Any] = {
        "generated": str(generated), "real": str(real), "backbone": backbone, "crop": crop,
        "backbone_pretrained": is_pretrained(backbone),
        "generated_samples": len(gen), "real_defects": len(real_defects),
        "kid": kid_mean, "kid_std": kid_std,
        "diversity": diversity(gen_feats), "diversity_real": diversity(real_feats),
    }
    by_class = per_class_kid(gen_feats, [s.class_name for s in gen], real_feats,
                             [s.class_name for s in real_defects], seed)
    if by_class:
        report["per_class"] = by_class
    test = list(real_ds)
    labels = np.array([0 if s.is_normal else 1 for s in test])
    if labels.min() != labels.max():
        has_masks = all(s.mask is not None or s.is_normal for s in test)
        test_masks = [s.defect_mask() for s in test] if has_masks else None
        report["realism"] = realism(net, [s.image for s in gen], [s.defect_mask() for s in gen],
                                    [s.image for s in test], labels, test_masks, resolution, tile=tile,
                                    normal_quantile=normal_quantile, seed=seed)
    return report
