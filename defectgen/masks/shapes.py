"""Masks taken from a folder of shape masks (real defect masks, drawn shapes), flipped, rotated and placed."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from defectgen.errors import DefectgenError
from defectgen.io.images import image_files, read_mask
from defectgen.io.sample import Box


class ShapeBank:
    """The non-empty masks of a folder, each cropped to its extent."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        if not folder.is_dir():
            raise DefectgenError(folder, "mask folder not found")
        self.shapes = []
        for p in image_files(folder):
            m = read_mask(p)
            box = Box.from_mask(m)
            if box is not None:
                self.shapes.append(m[int(box.y0):int(box.y1), int(box.x0):int(box.x1)])
        if not self.shapes:
            raise DefectgenError(folder, "no non-empty masks in this folder")

    def sample(self, height: int, width: int, rng: np.random.Generator, scale: tuple[float, float] = (0.1, 0.5),
               foreground: np.ndarray | None = None) -> np.ndarray:
        """One shape, randomly flipped and turned by a multiple of 90 degrees, resized so its longer side is a
        `scale` fraction of the image's shorter side, and placed at random (centred on the foreground if given)."""
        shape = self.shapes[int(rng.integers(len(self.shapes)))]
        shape = np.rot90(shape, int(rng.integers(4)))
        if rng.random() < 0.5:
            shape = shape[:, ::-1]
        side = rng.uniform(*scale) * min(height, width)
        f = side / max(shape.shape)
        sh, sw = max(1, min(height, round(shape.shape[0] * f))), max(1, min(width, round(shape.shape[1] * f)))
        placed = cv2.resize(shape.astype(np.uint8) * 255, (sw, sh), interpolation=cv2.INTER_NEAREST) > 127
        if not placed.any():
            placed[sh // 2, sw // 2] = True
        if foreground is not None and np.any(foreground):
            pts = np.argwhere(foreground)
            cy, cx = pts[int(rng.integers(len(pts)))]
            y0, x0 = int(np.clip(cy - sh // 2, 0, height - sh)), int(np.clip(cx - sw // 2, 0, width - sw))
        else:
            y0, x0 = int(rng.integers(0, height - sh + 1)), int(rng.integers(0, width - sw + 1))
        mask = np.zeros((height, width), bool)
        mask[y0:y0 + sh, x0:x0 + sw] = placed
        return mask
