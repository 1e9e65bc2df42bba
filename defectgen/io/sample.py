"""`Sample`: the one record every reader yields and every writer takes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in 0-based pixel coordinates, x1/y1 exclusive (so width = x1 - x0)."""

    x0: float
    y0: float
    x1: float
    y1: float
    label: str | None = None

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    def to_coco(self) -> list[float]:
        return [float(self.x0), float(self.y0), float(self.width), float(self.height)]

    @classmethod
    def from_mask(cls, mask: np.ndarray, label: str | None = None) -> Box | None:
        """The extent of a mask's foreground, or None for an empty mask."""
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            return None
        return cls(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1, label)


@dataclass
class Sample:
    """One image with its optional defect annotation.

    image: H x W x C array, C in {1, 3}, dtype uint8 or uint16 as stored on disk (RGB order).
    mask:  H x W bool array (True = defect) or None when the source has no pixel annotation.
    class_name: the defect class, or "good" for a normal image, or None when the layout does not say.
    boxes: defect boxes (from VOC/COCO, or derived from the mask by readers that have only masks).
    path / mask_path: where the image and mask are (read from, or to be written to).
    source: for a synthesized sample, the normal image it was painted on; seed: the sample's seed.
    """

    image: np.ndarray
    mask: np.ndarray | None = None
    class_name: str | None = None
    boxes: list[Box] = field(default_factory=list)
    path: Path | None = None
    mask_path: Path | None = None
    split: str | None = None
    source: Path | None = None
    seed: int | None = None

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def channels(self) -> int:
        return int(self.image.shape[2])

    @property
    def is_normal(self) -> bool:
        """True for a defect-free image: class 'good' (or unlabeled) with no defect pixels and no boxes."""
        if self.class_name not in (None, "good"):
            return False
        return not self.boxes and (self.mask is None or not self.mask.any())

    def defect_mask(self) -> np.ndarray:
        """The pixel mask, or one painted from the boxes when the source has boxes only (VOC)."""
        if self.mask is not None:
            return self.mask
        mask = np.zeros((self.height, self.width), dtype=bool)
        for b in self.boxes:
            x0, y0 = max(int(np.floor(b.x0)), 0), max(int(np.floor(b.y0)), 0)
            x1, y1 = min(int(np.ceil(b.x1)), self.width), min(int(np.ceil(b.y1)), self.height)
            mask[y0:y1, x0:x1] = True
        return mask
