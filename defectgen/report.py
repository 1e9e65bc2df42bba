"""Pictures and summaries people look at: contact sheets with mask outlines, dataset statistics."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from defectgen.io.images import to_uint8, write_image
from defectgen.io.sample import Sample

OUTLINE_RGB = (255, 40, 40)


def _tile(sample: Sample, size: int) -> np.ndarray:
    image = to_uint8(sample.image)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    h, w = image.shape[:2]
    f = size / max(h, w)
    nh, nw = max(1, round(h * f)), max(1, round(w * f))
    tile = np.full((size, size, 3), 32, np.uint8)
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
    y0, x0 = (size - nh) // 2, (size - nw) // 2
    tile[y0:y0 + nh, x0:x0 + nw] = resized
    mask = sample.mask if sample.mask is not None else (sample.defect_mask() if sample.boxes else None)
    if mask is not None and mask.any():
        small = cv2.resize(mask.astype(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST)
        if not small.any():  # a defect smaller than a tile pixel still gets an outline
            ys, xs = np.nonzero(mask)
            small[min(int(ys.mean() * f), nh - 1), min(int(xs.mean() * f), nw - 1)] = 1
        contours, _ = cv2.findContours(small, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        canvas = np.ascontiguousarray(tile[y0:y0 + nh, x0:x0 + nw])
        cv2.drawContours(canvas, contours, -1, OUTLINE_RGB, 1)
        tile[y0:y0 + nh, x0:x0 + nw] = canvas
    if sample.class_name and sample.class_name != "good":
        cv2.putText(tile, sample.class_name[:18], (3, size - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 0), 1,
                    cv2.LINE_AA)
    return tile


def contact_sheet(
    samples: list[Sample], path: str | Path | None = None, tile: int = 128, columns: int = 8,
) -> np.ndarray:
    """A grid of the samples (RGB uint8) with defect outlines in red and class names; written if `path` is given."""
    if not samples:
        raise ValueError("contact_sheet needs at least one sample")
    columns = min(columns, len(samples))
    rows = math.ceil(len(samples) / columns)
    gap = 2
    sheet = np.full((rows * (tile + gap) + gap, columns * (tile + gap) + gap, 3), 255, np.uint8)
    for i, s in enumerate(samples):
        r, c = divmod(i, columns)
        y0, x0 = gap + r * (tile + gap), gap + c * (tile + gap)
        sheet[y0:y0 + tile, x0:x0 + tile] = _tile(s, tile)
    if path is not None:
        write_image(path, sheet)
    return sheet


def _quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    q = np.quantile(np.asarray(values, float), [0.0, 0.25, 0.5, 0.75, 1.0])
    return {k: round(float(v), 6) for k, v in zip(("min", "p25", "median", "p75", "max"), q, strict=True)}


def dataset_summary(dataset, samples: list[Sample]) -> dict[str, Any]:
    """Counts and distributions over the samples that were read (see `defectgen inspect`)."""
    sizes = Counter(f"{s.height}x{s.width}" for s in samples)  # HxW, as --size takes it
    channels = Counter(s.channels for s in samples)
    dtypes = Counter(str(s.image.dtype) for s in samples)
    classes = Counter(s.class_name or "good" for s in samples)
    with_mask = [s for s in samples if s.mask is not None]
    area = [float(s.mask.mean()) for s in with_mask if s.mask.any()]
    empty = sum(1 for s in with_mask if not s.mask.any())
    boxes = sum(len(s.boxes) for s in samples)
    return {
        "path": str(dataset.root),
        "format": dataset.format,
        "images": len(samples),
        "splits": dict(Counter(s.split or "-" for s in samples)),
        "classes": dict(sorted(classes.items())),
        "sizes": dict(sizes.most_common()),
        "channels": {str(k): v for k, v in sorted(channels.items())},
        "bit_depth": {"uint8": 8, "uint16": 16}.get(dtypes.most_common(1)[0][0], 0) if dtypes else 0,
        "masks": len(with_mask),
        "empty_masks": empty,
        "boxes": boxes,
        "mask_area_fraction": _quantiles(area),
        "skipped": list(dataset.skipped),
    }
