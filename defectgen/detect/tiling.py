"""Images at their own size: anomaly maps resized back to each test image, and `Tiled`, any detector run on
overlapping N x N tiles at native scale (for images larger than the model input), the maps stitched back.

    det = Tiled(get_detector("exdd").from_options(backbone, options), tile=256)
    det.fit(normals, defects, masks)          # images of any size (smaller than a tile: mirrored up to one)
    maps, scores = det.predict(test_images)   # maps: one per image, at the image's own size
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from defectgen.errors import DefectgenError
from defectgen.io.images import pad_to, random_window, tile_starts


def restore_maps(maps: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """Each map (at the model input size) resized (bilinear) to its image's own (h, w), float32."""
    out = []
    for m, (h, w) in zip(maps, sizes, strict=True):
        m = np.asarray(m, np.float32)
        out.append(m if m.shape == (h, w) else cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR))
    return out


def rescale_boxes(found: Sequence[list[dict]], size: tuple[int, int], sizes: Sequence[tuple[int, int]]
                  ) -> list[list[dict]]:
    """Boxes ({"bbox": [x, y, w, h], ...}) found on `size` model inputs, in each image's own pixels."""
    out = []
    for boxes, (h, w) in zip(found, sizes, strict=True):
        fy, fx = h / size[0], w / size[1]
        out.append([dict(b, bbox=[b["bbox"][0] * fx, b["bbox"][1] * fy, b["bbox"][2] * fx, b["bbox"][3] * fy])
                    for b in boxes])
    return out


def check_tile(tile: int | None, multiple: int = 32, name: str = "tile") -> int | None:
    """`tile` as given (None: no tiling), or a one-line error for a side that is not a positive multiple."""
    if tile is None:
        return None
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile <= 0 or tile % multiple:
        raise DefectgenError(None, f"`{name}` must be a positive multiple of {multiple} (the side of the square "
                             f"tiles, such as 256), got {tile!r}")
    return int(tile)


class Tiled:
    """`detector` on `tile` x `tile` windows at native scale. fit: random windows of the normals (about one per
    tile's worth of area) and one window around a random pixel of each defect (its mask, clean image and label
    map cut alike). predict: windows every tile/2 over each image, maps averaged where they overlap; an image
    smaller than a tile is mirrored up to one and its map cut back. Image scores by the detector's own rule."""

    def __init__(self, detector, tile: int, seed: int = 0):
        self.detector, self.tile, self.seed = detector, check_tile(tile), int(seed)
        self.name = getattr(detector, "name", "")

    def fit(self, normals, defects=None, masks=None, progress: bool = False, *, cleans=None, labels=None,
            class_names: Sequence[str] = (), desc: str | None = None):
        rng = np.random.default_rng([self.seed, 11])
        t = self.tile
        crops: list[np.ndarray] = []
        for img in normals:
            img = pad_to(img, t, t)
            for _ in range(max(1, round(img.shape[0] * img.shape[1] / t**2))):
                y0, x0 = random_window(img.shape[0], img.shape[1], t, rng)
                crops.append(img[y0:y0 + t, x0:x0 + t])
        cut: dict[str, Any] = {"defects": defects, "masks": masks, "cleans": cleans, "labels": labels}
        if defects is not None and len(defects):
            cut = self._defect_windows(rng, cut)
        normal_crops = np.stack(crops) if crops else np.zeros((0, t, t, 3), np.uint8)
        self.detector.fit(normal_crops, cut["defects"], cut["masks"], progress, cleans=cut["cleans"],
                          labels=cut["labels"], class_names=class_names, desc=desc)
        return self

    def _defect_windows(self, rng: np.random.Generator, arrays: dict[str, Any]) -> dict[str, Any]:
        """The same window (around a random defect pixel) cut from each defect image and its companions."""
        t, out = self.tile, {k: [] for k, v in arrays.items() if v is not None}
        for i in range(len(arrays["defects"])):
            padded = {k: pad_to(np.asarray(arrays[k][i]), t, t) for k in out}
            y0, x0 = random_window(*padded["defects"].shape[:2], t, rng, padded["masks"])
            for k in out:
                out[k].append(padded[k][y0:y0 + t, x0:x0 + t])
        return {k: np.stack(out[k]) if k in out else None for k in arrays}

    def maps(self, image: np.ndarray) -> np.ndarray:
        """The stitched anomaly map of one image (any size), at its own size."""
        h, w = image.shape[:2]
        t, stride = self.tile, self.tile // 2
        padded = pad_to(image, t, t)
        ys, xs = tile_starts(padded.shape[0], t, stride), tile_starts(padded.shape[1], t, stride)
        total = np.zeros(padded.shape[:2], np.float32)
        count = np.zeros(padded.shape[:2], np.float32)
        for y0 in ys:  # one row of tiles at a time: memory grows with the image's width, not its area
            row = np.stack([padded[y0:y0 + t, x0:x0 + t] for x0 in xs])
            tiles, _ = self.detector.predict(row)
            for x0, m in zip(xs, tiles, strict=True):
                total[y0:y0 + t, x0:x0 + t] += m
                count[y0:y0 + t, x0:x0 + t] += 1
        return (total / count)[:h, :w]

    def predict(self, images) -> tuple[list[np.ndarray], np.ndarray]:
        """(one map per image at its own size, image scores)."""
        maps = [self.maps(np.asarray(img)) for img in images]
        return maps, self.detector.image_scores(maps)

    def predict_with_boxes(self, images):
        raise DefectgenError(None, "`tile` does not produce boxes yet: leave out `tile` to score box mAP on a "
                             "multi-class test set")

    def summary(self) -> dict[str, Any]:
        return {**self.detector.summary(), "tile": self.tile}

    def save(self, path: str | Path) -> None:
        self.detector.save(path)
