"""Perlin-noise defect masks (DRAEM / RealNet style) from the `noise` package, for any image size."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import noise
import numpy as np

# Perlin noise is smooth, so it is evaluated on a coarse grid and resized: `_PER_PERIOD` points per noise period
# along each axis (the finest the 128-point grid of earlier versions gave at 8 periods), never more than the image
# has pixels. The mask looks the same, a 2048x2048 image costs no more than a 128x128 one, and a field of 2
# periods costs 32 `pnoise2` calls per axis instead of 128 (each is a Python call: they were most of a draw).
_PER_PERIOD = 16


@dataclass
class PerlinConfig:
    """scale_range: noise periods across the image per axis; each axis draws a power of two in this range
    (small = large blobs). threshold: on the noise normalised to [-1, 1]. min_area/max_area: fractions of the
    image (or of its foreground) the mask must cover; draws are retried, and the last one is cut to the
    target area by quantile, so a mask is never empty. rotate: draw a random rotation of the noise field."""

    scale_range: tuple[int, int] = (2, 8)
    octaves: int = 1
    threshold: float = 0.5
    min_area: float = 0.005
    max_area: float = 0.25
    rotate: bool = True
    max_tries: int = 30

    def __post_init__(self):
        lo, hi = self.scale_range
        if not (1 <= lo <= hi):
            raise ValueError(f"scale_range must satisfy 1 <= min <= max, got {self.scale_range}")
        if not (0 < self.min_area <= self.max_area <= 1):
            raise ValueError(f"need 0 < min_area <= max_area <= 1, got {self.min_area}, {self.max_area}")
        if not (-1 < self.threshold < 1):
            raise ValueError(f"threshold must lie in (-1, 1), got {self.threshold}")


def perlin_field(height: int, width: int, rng: np.random.Generator, cfg: PerlinConfig) -> np.ndarray:
    """A float32 H x W Perlin field scaled to [-1, 1]."""
    lo, hi = (int(math.log2(v)) for v in cfg.scale_range)
    sy, sx = 2.0 ** rng.integers(lo, hi + 1), 2.0 ** rng.integers(lo, hi + 1)
    gh, gw = max(2, min(height, int(_PER_PERIOD * sy))), max(2, min(width, int(_PER_PERIOD * sx)))
    oy, ox = rng.uniform(0, 256, size=2)
    base = int(rng.integers(0, 256))
    ys = oy + np.arange(gh) * (sy / gh)
    xs = ox + np.arange(gw) * (sx / gw)
    grid = np.array([[noise.pnoise2(x, y, octaves=cfg.octaves, base=base) for x in xs] for y in ys], np.float32)
    field = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    if cfg.rotate:
        angle = float(rng.uniform(-90, 90))
        m = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
        field = cv2.warpAffine(field, m, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    peak = float(np.abs(field).max())
    return field / peak if peak > 0 else field


def perlin_mask(
    height: int, width: int, rng: np.random.Generator, cfg: PerlinConfig | None = None,
    foreground: np.ndarray | None = None,
) -> np.ndarray:
    """A bool H x W mask whose area fraction lies in [min_area, max_area] (of the foreground, if given)."""
    cfg = cfg or PerlinConfig()
    region = np.ones((height, width), bool) if foreground is None else np.asarray(foreground, bool)
    if region.shape != (height, width):
        raise ValueError(f"foreground is {region.shape}, expected {(height, width)}")
    if not region.any():
        region = np.ones((height, width), bool)  # no foreground found: the whole image is the object
    total = int(region.sum())
    field = None
    for _ in range(cfg.max_tries):
        field = perlin_field(height, width, rng, cfg)
        mask = (field > cfg.threshold) & region
        frac = mask.sum() / total
        if cfg.min_area <= frac <= cfg.max_area:
            return mask
    # Every draw missed the area bounds: keep the last field's highest values inside the region.
    target = int(round(rng.uniform(cfg.min_area, cfg.max_area) * total))
    target = min(max(target, 1), total)
    values = np.where(region, field, -np.inf).ravel()
    keep = np.argpartition(values, -target)[-target:]
    mask = np.zeros(height * width, bool)
    mask[keep] = True
    return mask.reshape(height, width)
