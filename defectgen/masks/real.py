"""Masks taken from real defects: each sample reuses the mask of a labeled defect of its class (DSYM-style).

Random Perlin blobs are the classic choice, but real defects are not blobs: a blowhole is one dot, a break sits at
the tile's edge, an 'uneven' region covers a quarter of the part. Reusing the labeled masks puts generated defects
where, and as large as, real ones are: a mask keeps its native pixel size on any image (a defect is as many pixels
on a 256x1600 strip as on the 200x200 crop it was labeled on; only one larger than the image is shrunk to fit), is
randomly flipped, and lies where it lay on its own image relative to the edges, moved to the nearest place on the
part's foreground when a foreground is given. Box-only sources (VOC) give their boxes as filled rectangles.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from defectgen.errors import DefectgenError
from defectgen.io.images import fit_mask
from defectgen.io.sample import Box, Sample
from defectgen.masks.placement import estimate_foreground, mask_rng, on_foreground
from defectgen.masks.source import with_box


@dataclass
class _Stored:
    """A labeled defect's mask cropped to its extent, and where that crop lay: its offset (y, x) as a fraction of
    the room its image left around it (0: at the top or left edge, 1: at the bottom or right edge)."""

    crop: np.ndarray
    where: tuple[float, float]

    @classmethod
    def of(cls, mask: np.ndarray) -> _Stored:
        ys, xs = np.nonzero(mask)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        room_y, room_x = mask.shape[0] - (y1 - y0), mask.shape[1] - (x1 - x0)
        return cls(np.ascontiguousarray(mask[y0:y1, x0:x1]),
                   (y0 / room_y if room_y else 0.5, x0 / room_x if room_x else 0.5))


class RealMasks:
    """A `MaskSource`, and `gen(i, h, w, foreground=None, label=None) -> (mask, boxes)`: mask i is a labeled
    defect of class `label` (any class when `label` is None or unknown), drawn from (seed, i), at its native size
    on the h x w image (shrunk only to fit), flipped at random, at its own relative place or, with a `foreground`,
    the nearest place wholly on it. `source` is a dataset folder with masks or boxes (an MVTec root uses its
    labeled/ split, else its test defects). In a synthesis run (`mask_for`) the foreground is that of the sample's
    normal image: real masks go on the part, not beside it."""

    def __init__(self, source: str | Path, seed: int = 0, flip: bool = True, fmt: str = "auto"):
        from defectgen.io.datasets import open_dataset

        ds = open_dataset(source, fmt).labeled_defects()
        self.source, self.seed, self.flip = Path(source), int(seed), bool(flip)
        self.folder = self.source
        self.by_class: dict[str, list[_Stored]] = defaultdict(list)
        for sample in ds:
            mask = sample.defect_mask()
            if mask.any():
                self.by_class[sample.class_name or "defect"].append(_Stored.of(mask))
        if not self.by_class:
            raise DefectgenError(source, "no defect masks or boxes found to take masks from")
        self.all = [m for masks in self.by_class.values() for m in masks]

    def describe(self) -> dict[str, Any]:
        return {"kind": "real", "source": str(self.source), "seed": self.seed, "flip": self.flip,
                "size": "native", "masks": {c: len(m) for c, m in sorted(self.by_class.items())}}

    def __call__(self, index: int, height: int, width: int, foreground: np.ndarray | None = None,
                 label: str | None = None) -> tuple[np.ndarray, list[Box]]:
        rng = mask_rng(self.seed, index)
        pool = self.by_class.get(label, self.all) if label is not None else self.all
        stored = pool[int(rng.integers(len(pool)))]
        crop, (fy, fx) = stored.crop, stored.where
        if self.flip:
            if rng.random() < 0.5:
                crop, fx = crop[:, ::-1], 1 - fx
            if rng.random() < 0.5:
                crop, fy = crop[::-1, :], 1 - fy
        if crop.shape[0] > height or crop.shape[1] > width:  # larger than the image: shrunk to fit
            f = min(height / crop.shape[0], width / crop.shape[1])
            crop = fit_mask(crop, max(1, int(crop.shape[0] * f)), max(1, int(crop.shape[1] * f)))
        ch, cw = crop.shape
        y0, x0 = round(fy * (height - ch)), round(fx * (width - cw))
        if foreground is not None and np.any(foreground):
            ys, xs = np.nonzero(on_foreground(crop, np.asarray(foreground, bool)))
            k = int(np.argmin((ys - y0) ** 2 + (xs - x0) ** 2))  # the nearest place on the part
            y0, x0 = int(ys[k]), int(xs[k])
        mask = np.zeros((height, width), bool)
        mask[y0:y0 + ch, x0:x0 + cw] = crop
        return with_box(mask, label)

    def mask_for(self, index: int, sample: Sample) -> tuple[np.ndarray, list[Box]]:
        return self(index, sample.height, sample.width, estimate_foreground(sample.image), sample.class_name)
