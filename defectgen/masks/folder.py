"""Masks used as they are: a folder of mask images (a `defectgen masks` output, or masks drawn by hand)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from defectgen.errors import DefectgenError
from defectgen.io.images import image_files, read_mask
from defectgen.io.sample import Box, Sample
from defectgen.masks.source import with_box


class MaskFolder:
    """A `MaskSource`: the PNGs of DIR/masks (a `defectgen masks` output) or DIR, in name order; sample i takes
    mask i (cycling). Each must have the size of the normal image it is used with."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        if not folder.is_dir():
            raise DefectgenError(folder, "mask folder not found")
        source = folder / "masks" if (folder / "masks").is_dir() else folder
        self.paths = image_files(source)
        if not self.paths:
            raise DefectgenError(source, "no mask images found")
        self.folder = folder

    def describe(self) -> dict[str, Any]:
        return {"kind": "folder", "path": str(self.folder), "masks": len(self.paths)}

    def mask_for(self, index: int, sample: Sample) -> tuple[np.ndarray, list[Box]]:
        path = self.paths[index % len(self.paths)]
        return with_box(read_mask(path, (sample.height, sample.width), sample.source), sample.class_name)
