"""Semi-supervised detection with pseudo-labels (the DSYM protocol).

A line has many unlabeled images and few labeled ones. The seg detector trained on the labeled ones (and any
generated set) keeps a mean teacher (`Seg.teacher`, the moving average of its weights); the teacher labels the
unlabeled images, and each region it finds (a connected component of its defect map above the detector's
`box_threshold`) passes two checks before it is used:

- confidence: the region's mean defect probability is at least `threshold`;
- it looks like a defect: for at least `feature_share` of its backbone patches, the nearest labeled patch is a
  defect patch rather than a background one (patches outside every mask, and the normals). This is the
  backbone-feature form of the check the generated-set filter makes with CLIP: a confident teacher that fires on
  a normal-looking stain is stopped here.

A kept region becomes a mask of the teacher's class. Pixels the teacher found likely (>= `ignore_above`) that no
kept region covers are left out of the loss (`IGNORE`), since they may be defects it was unsure of; an image with
no kept region is not used at all. The student is then trained again, from scratch and for as many steps, on its
own training set plus the pseudo-labeled images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from defectgen.detect.features import batches, image_features, nearest_distance, patches_inside
from defectgen.detect.seg import IGNORE, Seg
from defectgen.errors import DefectgenError

FEATURE_STRIDES = (4,)  # the finest level: defects are small, and deeper levels blur a region into its ring


@dataclass
class PseudoLabelRule:
    """threshold: least mean defect probability of a kept region; feature_share: least share of its patches that
    must look like labeled defects (0 turns the check off); ignore_above: unkept pixels at or above this defect
    probability are left out of the loss."""

    threshold: float = 0.7
    feature_share: float = 0.5
    ignore_above: float = 0.3

    def __post_init__(self):
        for name in ("threshold", "feature_share", "ignore_above"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise DefectgenError(None, f"`semi_{name}` must lie in [0, 1], got {value}")


class DefectReference:
    """Backbone patch features of labeled defects (inside their masks) and of background (patches no mask
    touches, and the normals), as many of each and at most `max_patches`, to ask whether a region looks like a
    defect."""

    def __init__(self, backbone, images: np.ndarray, masks: Sequence[np.ndarray], normals: np.ndarray,
                 max_patches: int = 4096, seed: int = 0):
        self.backbone = backbone
        gen = torch.Generator().manual_seed(seed)
        feats = image_features(backbone, images, FEATURE_STRIDES)
        defect = patches_inside(feats, masks)
        h, w = feats.shape[-2:]
        cover = F.adaptive_max_pool2d(torch.from_numpy(np.stack([np.asarray(m, np.float32) for m in masks]))[:, None],
                                      (h, w))[:, 0].to(feats.device)
        background = [feats.permute(0, 2, 3, 1)[cover == 0]]
        if len(normals):
            pick = torch.randperm(len(normals), generator=gen)[:256].sort().values.numpy()
            background.append(image_features(backbone, normals[pick], FEATURE_STRIDES).permute(0, 2, 3, 1)
                              .reshape(-1, feats.shape[1]))
        background = torch.cat(background)
        # as many of each: a nearest-neighbour vote between a small bank and a large one favours the large one
        n = min(len(defect), len(background), max_patches)
        self.defect, self.background = _subsample(defect, n, gen), _subsample(background, n, gen)
        if not len(self.defect) or not len(self.background):
            raise DefectgenError(None, "the labeled set gives no defect or no background patches to check "
                                 "pseudo-labels against")

    def share(self, feats: torch.Tensor, region: np.ndarray) -> float:
        """Of one image's D x h x w patch features inside `region` (H x W bool), the share nearer a defect patch
        than any background patch."""
        q = patches_inside(feats[None], [region])
        return float((nearest_distance(q, self.defect) < nearest_distance(q, self.background)).float().mean())


def _subsample(rows: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    return rows if len(rows) <= n else rows[torch.randperm(len(rows), generator=gen)[:n].to(rows.device)]


def pseudo_label(teacher: Seg, images: np.ndarray, rule: PseudoLabelRule, reference: DefectReference | None = None,
                 batch_size: int = 16, progress: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """Label `images` (N x H x W x C uint8, one size) with `teacher`: (the pseudo-labeled images as a training
    set, {"images", "masks", "labels", "class_names"}, with `IGNORE` where unsure; and the counts of regions
    kept and dropped, for the report)."""
    names = list(teacher.class_names) or ["defect"]
    counts = {"unlabeled_images": int(len(images)), "regions": 0, "kept": 0, "dropped_confidence": 0,
              "dropped_feature": 0, "images_used": 0}
    kept_images, masks, labels = [], [], []
    from defectgen.progress import bar

    for sl in bar(list(batches(len(images), batch_size)), desc="pseudo-labels", unit="batch",
                  disable=not progress, mininterval=1.0):
        prob, cls = teacher.predict_labels(images[sl])
        feats = image_features(reference.backbone, images[sl], FEATURE_STRIDES) if reference is not None and \
            rule.feature_share > 0 else None
        for i in range(len(prob)):
            label = _label_regions(prob[i], cls[i], rule, teacher, counts,
                                   None if feats is None else (reference, feats[i]))
            if label is not None:
                kept_images.append(images[sl][i])
                masks.append(label.astype(bool) & (label != IGNORE))
                labels.append(label)
    counts["images_used"] = len(kept_images)
    data = {"images": np.stack(kept_images) if kept_images else None, "masks": np.stack(masks) if masks else None,
            "labels": np.stack(labels) if labels else None, "class_names": names}
    return data, counts


def _label_regions(prob: np.ndarray, cls: np.ndarray, rule: PseudoLabelRule, teacher: Seg, counts: dict[str, int],
                   check: tuple[DefectReference, torch.Tensor] | None) -> np.ndarray | None:
    """One image's label map from the teacher's maps (None when no region is kept), counting each region."""
    label = np.zeros(prob.shape, np.uint8)
    for x, y, w, h, region in teacher.regions(prob):
        box = np.s_[y:y + h, x:x + w]
        counts["regions"] += 1
        if float(prob[box][region].mean()) < rule.threshold:
            counts["dropped_confidence"] += 1
            continue
        if check is not None:
            whole = np.zeros(prob.shape, bool)
            whole[box] = region
            if check[0].share(check[1], whole) < rule.feature_share:
                counts["dropped_feature"] += 1
                continue
        counts["kept"] += 1
        label[box][region] = 1 + int(np.bincount(cls[box][region].ravel()).argmax())
    if not label.any():
        return None
    label[(prob >= rule.ignore_above) & (label == 0)] = IGNORE
    return label


