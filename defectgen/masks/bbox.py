"""Box masks: rectangles and ellipses whose sizes follow a range or the boxes of a labeled set."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from defectgen.io.sample import Box


@dataclass
class BoxConfig:
    """shape: rect, ellipse or mixed. count: how many boxes per mask (inclusive range). width/height: fractions
    of the image side. stats: (width, height) fraction pairs of real boxes; when given, sizes are drawn from
    them (with +-15% jitter) instead of from the ranges."""

    shape: str = "rect"
    count: tuple[int, int] = (1, 1)
    width: tuple[float, float] = (0.05, 0.3)
    height: tuple[float, float] = (0.05, 0.3)
    stats: list[tuple[float, float]] = field(default_factory=list)

    def __post_init__(self):
        if self.shape not in ("rect", "ellipse", "mixed"):
            raise ValueError(f"shape must be rect, ellipse or mixed, got {self.shape!r}")
        for name in ("width", "height"):
            lo, hi = getattr(self, name)
            if not (0 < lo <= hi <= 1):
                raise ValueError(f"{name} range must satisfy 0 < min <= max <= 1, got {(lo, hi)}")
        if not (1 <= self.count[0] <= self.count[1]):
            raise ValueError(f"count must satisfy 1 <= min <= max, got {self.count}")


def box_stats_from(dataset) -> list[tuple[float, float]]:
    """(width, height) fractions of every box in a labeled dataset (boxes, or the extents of its masks)."""
    stats = []
    for sample in dataset:
        for b in sample.boxes:
            stats.append((b.width / sample.width, b.height / sample.height))
    return stats


def box_mask(
    height: int, width: int, rng: np.random.Generator, cfg: BoxConfig | None = None,
    foreground: np.ndarray | None = None, label: str | None = None,
) -> tuple[np.ndarray, list[Box]]:
    """A bool mask with 1..n boxes or ellipses, and the boxes themselves (their true pixel extents)."""
    cfg = cfg or BoxConfig()
    mask = np.zeros((height, width), np.uint8)
    boxes = []
    centres = np.argwhere(foreground) if foreground is not None and np.any(foreground) else None
    for _ in range(int(rng.integers(cfg.count[0], cfg.count[1] + 1))):
        if cfg.stats:
            fw, fh = cfg.stats[int(rng.integers(len(cfg.stats)))]
            fw, fh = fw * rng.uniform(0.85, 1.15), fh * rng.uniform(0.85, 1.15)
        else:
            fw, fh = rng.uniform(*cfg.width), rng.uniform(*cfg.height)
        bw = int(np.clip(round(fw * width), 1, width))
        bh = int(np.clip(round(fh * height), 1, height))
        if centres is not None:
            cy, cx = centres[int(rng.integers(len(centres)))]
            x0 = int(np.clip(cx - bw // 2, 0, width - bw))
            y0 = int(np.clip(cy - bh // 2, 0, height - bh))
        else:
            x0 = int(rng.integers(0, width - bw + 1))
            y0 = int(rng.integers(0, height - bh + 1))
        one = np.zeros_like(mask)
        shape = cfg.shape if cfg.shape != "mixed" else ("rect", "ellipse")[int(rng.integers(2))]
        if shape == "rect" or bw < 3 or bh < 3:
            one[y0:y0 + bh, x0:x0 + bw] = 1
        else:
            # Pixel centres inside the ellipse inscribed in the box: the extent is exactly bw x bh
            # (cv2.ellipse spills a pixel past the box).
            yy, xx = np.ogrid[0:bh, 0:bw]
            inside = ((xx - (bw - 1) / 2) / (bw / 2)) ** 2 + ((yy - (bh - 1) / 2) / (bh / 2)) ** 2 <= 1.0
            one[y0:y0 + bh, x0:x0 + bw] = inside
        extent = Box.from_mask(one, label)
        if extent is not None:
            boxes.append(extent)
            mask |= one
    return mask.astype(bool), boxes
