"""ExDD: a PatchCore negative bank of normal patches plus a positive bank of synthetic-defect patches.

Patch score d_neg / (d_pos + eps): far from every normal patch and close to a known defect patch. Without a
positive bank the score is d_neg alone (plain PatchCore), which is the `none` baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from defectgen.detect.backbone import Backbone, backbone_of, backbone_record
from defectgen.detect.base import Detector, DetectorOptions, read_weights, register_detector, write_weights
from defectgen.detect.features import (
    CORESET_MAX_ROWS,
    batches,
    greedy_coreset,
    image_features,
    leave_one_out_quantile,
    nearest_distance,
    patches_inside,
    smooth_maps,
    upsample,
)
from defectgen.errors import DefectgenError


@register_detector("exdd")
class ExDD(Detector):
    """strides: backbone maps to use (8 and 16 as in PatchCore); coreset_ratio: fraction of the normal patches
    kept in the negative bank; positive_ratio: the same for the positive bank; eps: keeps the ratio finite on
    patches that equal a positive patch; sigma: Gaussian blur of the upsampled map, in pixels.
    positive_quantile: drop positive patches that the negative bank already explains, i.e. whose distance to it
    is below this quantile of normal patches' distances to the bank entries of other images (None keeps every
    positive patch). A synthetic 'defect' patch that looks normal pulls d_pos down on normal test patches and
    raises their score, which is how a faint or misplaced generator makes the ratio worse than plain PatchCore."""

    options = ("seed", "sigma", "coreset_ratio", "positive_quantile")

    def __init__(self, backbone: Backbone, strides: Sequence[int] = (8, 16), coreset_ratio: float = 0.1,
                 positive_ratio: float = 1.0, eps: float = 1e-3, sigma: float = 4.0, seed: int = 0,
                 batch_size: int = 16, positive_quantile: float | None = None):
        if not 0 < coreset_ratio <= 1 or not 0 < positive_ratio <= 1:
            raise ValueError("coreset ratios must lie in (0, 1]")
        if positive_quantile is not None and not 0 <= positive_quantile < 1:
            raise ValueError(f"positive_quantile must lie in [0, 1), got {positive_quantile}")
        self.positive_quantile = None if positive_quantile is None else float(positive_quantile)
        self.positive_dropped = 0
        self.coreset_sampled_from = 0  # normal patches above CORESET_MAX_ROWS: the greedy saw a random share
        self.backbone = backbone
        self.strides = tuple(int(s) for s in strides)
        self.coreset_ratio = float(coreset_ratio)
        self.positive_ratio = float(positive_ratio)
        self.eps = float(eps)
        self.sigma = float(sigma)
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.negative: torch.Tensor | None = None
        self.positive: torch.Tensor | None = None

    @classmethod
    def from_options(cls, backbone: Backbone, options: DetectorOptions) -> ExDD:
        return cls(backbone, coreset_ratio=options.coreset_ratio, sigma=options.sigma, seed=options.seed,
                   positive_quantile=options.positive_quantile)

    def summary(self) -> dict[str, Any]:
        out = {"negative_bank": 0 if self.negative is None else int(self.negative.shape[0]),
               "positive_bank": 0 if self.positive is None else int(self.positive.shape[0]),
               "positive_dropped": self.positive_dropped}
        if self.coreset_sampled_from:
            out["coreset_sampled_from"] = self.coreset_sampled_from
        if hasattr(self.backbone, "compression"):  # diffusion features: the memory the PCA saves
            out["compression"] = self.backbone.compression(self.strides)
        return out

    @property
    def device(self) -> torch.device:
        return self.backbone.mean.device

    def features(self, images: Sequence[np.ndarray] | np.ndarray, progress: bool = False,
                 desc: str = "features") -> torch.Tensor:
        """N x D x h x w patch features of H x W x C images (uint8 or float in [0, 1])."""
        return image_features(self.backbone, images, self.strides, self.batch_size, progress, desc)

    def fit(self, normals: Sequence[np.ndarray] | np.ndarray, defects: Sequence[np.ndarray] | None = None,
            masks: Sequence[np.ndarray] | None = None, progress: bool = False, *,
            cleans: np.ndarray | None = None, labels: np.ndarray | None = None, class_names: Sequence[str] = (),
            desc: str | None = None) -> ExDD:
        """Build the negative bank from `normals` and, if given, the positive bank from the patches of
        `defects` that lie inside `masks` (a patch counts when half of it is defect; an image whose defect
        covers no patch that much gives its most-covered patch, so tiny defects are not lost). The clean
        images and classes of the `Detector` interface play no part in the banks."""
        desc = desc or "exdd"
        if progress:
            print(f"{desc}: building banks from {len(normals)} normals"
                  + (f" and {len(defects)} defects" if defects is not None else ""), flush=True)
        if hasattr(self.backbone, "fit_projection"):  # wide diffusion features: PCA on the normals first
            self.backbone.fit_projection(normals, self.batch_size, self.seed)
        feats = self.features(normals, progress, f"{desc}: normal features")
        flat = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])
        n_keep = max(1, int(round(self.coreset_ratio * flat.shape[0])))
        self.coreset_sampled_from = int(flat.shape[0]) if n_keep < CORESET_MAX_ROWS < flat.shape[0] else 0
        if self.coreset_sampled_from and progress:
            print(f"{desc}: {flat.shape[0]} normal patches; the coreset's {n_keep} are picked among a random "
                  f"{CORESET_MAX_ROWS} of them", flush=True)
        keep = greedy_coreset(flat, n_keep, self.seed, progress=progress, desc=f"{desc}: coreset")
        self.negative = flat[keep].contiguous()
        self.positive = None
        if defects is not None and len(defects):
            if masks is None or len(masks) != len(defects):
                raise ValueError("one mask per defect image is needed")
            pos = self.defect_patches(defects, masks, progress, f"{desc}: defect features")
            if pos.shape[0] and self.positive_quantile is not None:
                limit = self.normal_distance_quantile(flat, keep, feats.shape[-2] * feats.shape[-1])
                near = nearest_distance(pos, self.negative) <= limit
                self.positive_dropped = int(near.sum())
                pos = pos[~near]
            if pos.shape[0]:
                n = max(1, int(round(self.positive_ratio * pos.shape[0])))
                pos = pos[greedy_coreset(pos, n, self.seed + 1)]
                self.positive = pos.contiguous()
        return self

    def normal_distance_quantile(self, normal_patches: torch.Tensor, bank_index: torch.Tensor, per_image: int,
                                 limit: int = 2000) -> float:
        """How far from the negative bank a patch may lie and still be normal: the `positive_quantile` quantile
        of normal patches' distances to the bank entries taken from *other* images (`leave_one_out_quantile`)."""
        groups = torch.arange(normal_patches.shape[0], device=normal_patches.device) // per_image
        return leave_one_out_quantile(normal_patches, groups, self.negative,
                                      bank_index.to(normal_patches.device) // per_image, self.positive_quantile,
                                      self.seed + 2, limit)

    @torch.no_grad()
    def defect_patches(self, defects: Sequence[np.ndarray], masks: Sequence[np.ndarray], progress: bool = False,
                       desc: str = "defect features") -> torch.Tensor:
        """P x D features of the patches of `defects` that lie inside `masks` (see `fit`)."""
        return patches_inside(self.features(defects, progress, desc), masks)

    @torch.no_grad()
    def patch_scores(self, feats: torch.Tensor) -> torch.Tensor:
        """N x D x h x w features -> N x h x w patch scores."""
        if self.negative is None:
            raise RuntimeError("fit or load the detector first")
        n, d, h, w = feats.shape
        q = feats.permute(0, 2, 3, 1).reshape(-1, d)
        score = nearest_distance(q, self.negative)
        if self.positive is not None:
            score = score / (nearest_distance(q, self.positive) + self.eps)
        return score.view(n, h, w)

    @torch.no_grad()
    def predict(self, images: Sequence[np.ndarray] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(anomaly maps N x H x W float32 at the images' size, image scores N: each map's maximum)."""
        maps = []
        for sl in batches(len(images), self.batch_size):
            chunk = images[sl]
            size = np.asarray(chunk[0]).shape[:2]
            patch = self.patch_scores(self.features(chunk))
            maps.append(smooth_maps(upsample(patch, size).cpu().numpy(), self.sigma))
        out = np.concatenate(maps)
        return out, out.reshape(len(out), -1).max(1)

    def config(self) -> dict:
        return {"detector": "exdd", **backbone_record(self.backbone), "strides": list(self.strides),
                "coreset_ratio": self.coreset_ratio, "positive_ratio": self.positive_ratio, "eps": self.eps,
                "sigma": self.sigma, "seed": self.seed, "positive_quantile": self.positive_quantile}

    def save(self, path: str | Path) -> None:
        """Both banks and the configuration in one safetensors file (written atomically)."""
        if self.negative is None:
            raise RuntimeError("nothing to save: fit the detector first")
        tensors = {"negative": self.negative}
        if self.positive is not None:
            tensors["positive"] = self.positive
        if hasattr(self.backbone, "projection_state"):
            tensors.update(self.backbone.projection_state())
        write_weights(path, tensors, self.config())

    @classmethod
    def load(cls, path: str | Path, backbone: Backbone | None = None) -> ExDD:
        """Read banks saved by `save`; the backbone is loaded from the name recorded there unless given."""
        tensors, meta = read_weights(path, "exdd", "ExDD bank file")
        if "negative" not in tensors:
            raise DefectgenError(path, "not an ExDD bank file (no negative bank)")
        backbone = backbone or backbone_of(meta)
        if hasattr(backbone, "load_projection_state"):
            backbone.load_projection_state(tensors)
        det = cls(backbone, meta["strides"], meta["coreset_ratio"], meta["positive_ratio"], meta["eps"],
                  meta["sigma"], meta["seed"], positive_quantile=meta.get("positive_quantile"))
        det.negative = tensors["negative"].to(det.device)
        det.positive = tensors["positive"].to(det.device) if "positive" in tensors else None
        return det
