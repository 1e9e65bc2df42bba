"""Contact sheets: a grid of samples with their defects outlined and named, optionally each defect enlarged beside
the same crop of its source normal; and a text card where there is nothing to show. Used by `synthesize`,
`inspect` and the proofs."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from defectgen.errors import DefectgenError
from defectgen.io.images import padded_box, read_image, to_uint8, write_image
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


def _zoom_tiles(sample: Sample, size: int) -> list[np.ndarray]:
    """Two tiles beside a defect's thumbnail: the defect enlarged (a square around its largest region, no outline,
    so thin defects stay visible) and the same square of the normal it was painted on, where that is known."""
    blank = np.full((size, size, 3), 32, np.uint8)
    mask = sample.mask if sample.mask is not None else (sample.defect_mask() if sample.boxes else None)
    if mask is not None and mask.any():  # the largest region: a scatter of blobs would span the whole image
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        mask = labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    box = padded_box(mask, pad=1.0, min_side=16, square=True) if mask is not None else None
    if box is None:
        return [blank, blank]
    y0, y1, x0, x1 = box
    source = None
    if sample.source is not None:
        try:
            source = read_image(sample.source)
        except (OSError, ValueError, DefectgenError):
            source = None
    crops = [sample.image, source if source is not None and source.shape[:2] == sample.image.shape[:2] else None]
    tiles = []
    for image, label in zip(crops, ("defect, zoomed", "normal"), strict=True):
        if image is None:
            tiles.append(blank)
            continue
        tile = _tile(Sample(image[y0:y1, x0:x1]), size)
        cv2.putText(tile, label, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 0), 1, cv2.LINE_AA)
        tiles.append(tile)
    return tiles


def text_card(text: str, width: int = 480, height: int = 64) -> np.ndarray:
    """A white RGB picture that says `text`: what a contact sheet shows when there is nothing to show."""
    card = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(card, text[:60], (10, height // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return card


def contact_sheet(
    samples: list[Sample], path: str | Path | None = None, tile: int = 128, columns: int = 8, zoom: bool = False,
) -> np.ndarray:
    """A grid of the samples (RGB uint8) with defect outlines in red and class names; written if `path` is given.
    With `zoom`, each sample is followed by its defect enlarged and the same crop of its source normal (`columns`
    then counts samples, three tiles each)."""
    if not samples:
        raise ValueError("contact_sheet needs at least one sample")
    cells = [[_tile(s, tile), *(_zoom_tiles(s, tile) if zoom else [])] for s in samples]
    group, groups = len(cells[0]), min(columns, len(samples))
    rows = math.ceil(len(samples) / groups)
    gap, group_gap = 2, 6 if zoom else 0  # a wider gap between one sample's tiles and the next sample's
    width = groups * group * (tile + gap) + gap + (groups - 1) * group_gap
    sheet = np.full((rows * (tile + gap) + gap, width, 3), 255, np.uint8)
    for i, tiles in enumerate(cells):
        r, g = divmod(i, groups)
        for k, cell in enumerate(tiles):
            y0, x0 = gap + r * (tile + gap), gap + (g * group + k) * (tile + gap) + g * group_gap
            sheet[y0:y0 + tile, x0:x0 + tile] = cell
    if path is not None:
        write_image(path, sheet)
    return sheet
