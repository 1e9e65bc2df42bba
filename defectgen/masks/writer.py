"""`defectgen masks`: a folder of mask PNGs plus their COCO file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from defectgen.errors import DefectgenError
from defectgen.io.coco import CocoBuilder
from defectgen.io.datasets import open_dataset
from defectgen.io.images import check_image_size, write_mask
from defectgen.io.output import output_folder
from defectgen.io.sample import Sample
from defectgen.masks import MaskGenerator, estimate_foreground
from defectgen.progress import bar

# Working memory of one Perlin or box mask per pixel: float32 noise, its rotation and quantile copies, the bool
# mask, the 0/255 image and its PNG encoding.
MASK_BYTES_PER_PIXEL = 24


def _reference_shapes(like: Path, fmt: str, n: int, object_only: bool, on_bad: str):
    """(H, W, foreground or None, source path) for the first min(n, len) readable images of `like`."""
    dataset = open_dataset(like, fmt, on_bad=on_bad)
    refs, skipped = [], 0
    for entry in dataset.entries:
        if len(refs) >= n:
            break
        try:
            image = dataset.load(entry).image
        except DefectgenError:
            if on_bad != "skip":
                raise
            skipped += 1
            continue
        fg = estimate_foreground(image) if object_only else None
        refs.append((image.shape[0], image.shape[1], fg, str(entry.image_path)))
    if not refs:
        raise DefectgenError(like, "no readable images to take mask sizes from")
    return refs, skipped


def write_mask_set(
    out_dir: str | Path, generator: MaskGenerator, n: int, *, size: tuple[int, int] | None = None,
    like: str | Path | None = None, like_format: str = "auto", object_only: bool = False, category: str = "defect",
    params: dict[str, Any] | None = None, overwrite: bool = False, on_bad: str = "error",
    protect: tuple[str | Path | None, ...] = (),
) -> dict[str, Any]:
    """Write n masks (mask i sized like reference image i mod len, or `size`) and annotations.json; `protect`:
    other inputs (a --like-labeled set) the output folder must stay out of."""
    if (size is None) == (like is None):
        raise ValueError("give exactly one of size or like")
    if like is not None:
        refs, skipped = _reference_shapes(Path(like), like_format, n, object_only, on_bad)
    else:
        check_image_size(*size, MASK_BYTES_PER_PIXEL, "mask size")
        refs, skipped = [(size[0], size[1], None, None)], 0
    areas = []
    # A failed or interrupted run leaves no half mask set behind (it cannot be resumed).
    with output_folder(out_dir, overwrite=overwrite, resumable=False, verb="masks",
                       protect=[like, *protect]) as out_dir:
        coco = CocoBuilder([category], root=out_dir)
        for i in bar(range(n), desc="masks", unit="mask"):
            h, w, fg, source = refs[i % len(refs)]
            mask, boxes = generator(i, h, w, foreground=fg, label=category)
            # the mask is the image of this set: one sample per mask, written and annotated like any other
            sample = Sample(mask[:, :, None].astype(np.uint8) * 255, mask, category, boxes,
                            path=out_dir / "masks" / f"{i:06d}.png")
            write_mask(sample.path, mask)
            coco.add(sample, image_id=i + 1, **({"source_image": source} if source else {}))
            areas.append(float(mask.mean()))
        coco.save(out_dir / "annotations.json", {"defectgen": {
            "command": "masks", "params": params or {}, "generator": generator.describe(),
        }})
    return {"masks": n, "skipped": skipped, "area_median": float(np.median(areas)),
            "area_min": float(np.min(areas)), "area_max": float(np.max(areas))}
