"""`defectgen masks`: a folder of mask PNGs plus their COCO file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from defectgen.errors import DefectgenError
from defectgen.io.coco import CocoBuilder
from defectgen.io.datasets import open_dataset
from defectgen.io.images import check_image_size, write_mask
from defectgen.io.output import output_folder
from defectgen.io.sample import Sample
from defectgen.masks import resolve_masks
from defectgen.masks.placement import estimate_foreground
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


@dataclass(frozen=True)
class MaskSetOptions:
    """One `defectgen masks` run, as the command line builds it and `write_mask_set` takes it.

    kind, preset, shape, min_area, max_area, threshold: the mask source (`resolve_masks`; a preset's fields, then
    the ones given here). n, seed: how many masks; mask i depends only on (seed, i). size or like: every mask
    HxW, or mask i sized like image i (cycling) of the set `like` (layout `fmt`), kept on its foreground with
    `object_only`. like_labeled: bbox: box sizes drawn from this labeled set. category: the COCO category.
    overwrite, on_bad: as every verb's."""

    kind: str = "perlin"
    n: int = 16
    size: tuple[int, int] | None = None
    like: Path | None = None
    fmt: str = "auto"
    preset: str | None = None
    like_labeled: Path | None = None
    shape: str | None = None
    min_area: float | None = None
    max_area: float | None = None
    threshold: float | None = None
    object_only: bool = False
    category: str = "defect"
    seed: int = 0
    overwrite: bool = False
    on_bad: str = "error"

    def record(self) -> dict[str, Any]:
        """What annotations.json records of the run."""
        return {"kind": self.kind, "n": self.n, "size": "x".join(map(str, self.size)) if self.size else None,
                "like": str(self.like) if self.like else None, "preset": self.preset,
                "like_labeled": str(self.like_labeled) if self.like_labeled else None,
                "object_only": self.object_only, "seed": self.seed}


def write_mask_set(out_dir: str | Path, options: MaskSetOptions) -> dict[str, Any]:
    """Write n masks (mask i sized like reference image i mod len, or `size`) and annotations.json; the output
    folder stays out of `like` and `like_labeled`."""
    o = options
    if (o.size is None) == (o.like is None):
        raise DefectgenError(None, "give exactly one of `size` HxW or `like` (a folder of images)")
    generator = resolve_masks(o.kind, seed=o.seed, preset=o.preset, drawn_only=True, shape=o.shape,
                              min_area=o.min_area, max_area=o.max_area, threshold=o.threshold,
                              like_labeled=o.like_labeled, fmt=o.fmt)
    n, size, like, category = o.n, o.size, o.like, o.category
    if like is not None:
        refs, skipped = _reference_shapes(Path(like), o.fmt, n, o.object_only, o.on_bad)
    else:
        check_image_size(*size, MASK_BYTES_PER_PIXEL, "mask size")
        refs, skipped = [(size[0], size[1], None, None)], 0
    areas = []
    # A failed or interrupted run leaves no half mask set behind (it cannot be resumed).
    with output_folder(out_dir, overwrite=o.overwrite, resumable=False, verb="masks",
                       protect=[like, o.like_labeled]) as out_dir:
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
            "command": "masks", "params": o.record(), "generator": generator.describe(),
        }})
    return {"masks": n, "skipped": skipped, "area_median": float(np.median(areas)),
            "area_min": float(np.min(areas)), "area_max": float(np.max(areas))}
