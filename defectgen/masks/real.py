"""Masks taken from real defects: each sample reuses the mask of a labeled defect of its class (DSYM-style).

Random Perlin blobs are the classic choice, but real defects are not blobs: a blowhole is one dot, a break sits at
the tile's edge, an 'uneven' region covers a quarter of the part. Reusing the labeled masks (resized to the normal
image, randomly flipped) puts generated defects where, and as large as, real ones are. Box-only sources (VOC)
give their boxes as filled rectangles.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from defectgen.errors import DefectgenError
from defectgen.io.sample import Box
from defectgen.masks import mask_rng

# Stored masks are shrunk to at most this many pixels a side: enough for any target size, and 1440 NEU boxes
# or a few hundred large MVTec masks stay a few MB.
_STORE = 256


class RealMasks:
    """`gen(i, h, w, foreground=None, label=None) -> (mask, boxes)`: mask i is a labeled defect of class
    `label` (any class when `label` is None or unknown), drawn from (seed, i), resized to h x w and flipped at
    random. `source` is a dataset folder with masks or boxes (an MVTec root uses its labeled/ split, else its
    test defects)."""

    def __init__(self, source: str | Path, seed: int = 0, flip: bool = True, fmt: str = "auto"):
        from defectgen.io.datasets import open_dataset

        ds = open_dataset(source, fmt).labeled_defects()
        self.source, self.seed, self.flip = Path(source), int(seed), bool(flip)
        self.by_class: dict[str, list[np.ndarray]] = defaultdict(list)
        for sample in ds:
            mask = sample.defect_mask()
            if not mask.any():
                continue
            self.by_class[sample.class_name or "defect"].append(_shrink(mask))
        if not self.by_class:
            raise DefectgenError(source, "no defect masks or boxes found to take masks from")
        self.all = [m for masks in self.by_class.values() for m in masks]

    def describe(self) -> dict[str, Any]:
        return {"kind": "real", "source": str(self.source), "seed": self.seed, "flip": self.flip,
                "masks": {c: len(m) for c, m in sorted(self.by_class.items())}}

    def __call__(self, index: int, height: int, width: int, foreground: np.ndarray | None = None,
                 label: str | None = None) -> tuple[np.ndarray, list[Box]]:
        rng = mask_rng(self.seed, index)
        pool = self.by_class.get(label, self.all) if label is not None else self.all
        small = pool[int(rng.integers(len(pool)))]
        if self.flip:
            if rng.random() < 0.5:
                small = small[:, ::-1]
            if rng.random() < 0.5:
                small = small[::-1, :]
        # Area resize, then a threshold at half coverage, or at half the peak for a defect thinner than a pixel
        # at this size: a one-pixel blowhole or a hairline crack shrinks instead of vanishing.
        interp = cv2.INTER_AREA if small.shape[0] > height else cv2.INTER_LINEAR
        cover = cv2.resize(np.ascontiguousarray(small), (width, height), interpolation=interp)
        mask = cover >= min(0.5, 0.5 * float(cover.max()))  # stored masks are never empty: max > 0
        box = Box.from_mask(mask, label)
        return mask, [box] if box else []


def _shrink(mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    scale = min(1.0, _STORE / max(h, w))
    if scale == 1.0:
        return mask.astype(np.float32)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA)
