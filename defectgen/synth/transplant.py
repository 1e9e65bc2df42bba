"""The harmonized transplant: a real labeled defect pasted onto a normal image (copy-paste), then re-drawn by a
trained DDPM from the middle of its reverse process (SDEdit). The structure comes from real defects; texture,
shape and boundary from the model, which has learned the surface (ddpm) or the defect classes (cddpm).
`strength` sets how far a sample strays from its pasted source: near 0 it stays the copy-paste composite, at 1
the pasted pixels are forgotten and only the mask remains. `keep_core` keeps the pasted defect's own pixels in the
mask's core and gives the model its rim, blending by depth inside the mask: the seam is re-drawn, while a small
defect (a pinhole, a thin crack) that a re-draw would paint over as surface keeps its structure.

    defectgen synthesize --model runs/ddpm --labeled labeled/ --normals good/ --strength 0.2 --keep-core 1 \
        --out synth/
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from defectgen.errors import DefectgenError
from defectgen.io.images import mask_window, match_channels
from defectgen.io.sample import Box, Sample
from defectgen.synth.base import Abilities
from defectgen.synth.copypaste import CopyPasteGenerator
from defectgen.synth.ddpm_generator import DdpmGenerator

DEFAULT_STRENGTH = 0.5


class TransplantGenerator:
    """A `DefectGenerator` that is also the `MaskSource` of its samples (the pasted defects' masks, like
    copypaste). It works on whole normal images: the paste needs the image's size, and the DDPM then runs in a
    model-sized window around the mask, as the pipeline would run it."""

    resolution = None
    channels = None
    abilities = Abilities(makes_own_masks=True, conditional=True)

    def __init__(self, model: str | Path, labeled: str | Path, strength: float = DEFAULT_STRENGTH,
                 blend: str | None = None, keep_core: float | None = None, augment: str | None = None,
                 **ddpm_options: Any):
        if keep_core is not None and not 0 < keep_core <= 1:
            raise DefectgenError(None, f"`keep_core` must lie in (0, 1], got {keep_core}")
        self.keep_core = keep_core
        # the model supplies the variety: the pasted defect stays as it was recorded, only mirrored
        self.paste = CopyPasteGenerator(labeled, blend=blend or "paste", augment=augment or "flips")
        self.folder = self.paste.folder
        self.ddpm = DdpmGenerator(model, strength=strength, sigma=0.0, **ddpm_options)
        self.name = f"transplant-{self.ddpm.name}"
        self.strength = self.ddpm.strength
        # the classes are the pasted defects'; a conditional model draws each sample's class from them too
        self.class_distribution = self.paste.class_distribution

    def info(self) -> dict[str, Any]:
        return {**self.ddpm.info(), "model": self.name, "ddpm": str(self.ddpm.path), "strength": self.strength,
                "labeled": self.paste.info().get("labeled"), "blend": self.paste.blend, "augment": self.paste.augment,
                "keep_core": self.keep_core}

    def describe(self) -> dict[str, Any]:
        return {"transplant": self.paste.describe(), "strength": self.strength}

    def check_class(self, class_name: str | None) -> None:
        self.paste.check_class(class_name)
        self.ddpm.check_class(class_name)

    def make_mask(self, normal: np.ndarray, class_name: str | None, seed: int) -> np.ndarray:
        return self.paste.make_mask(normal, class_name, seed)

    def mask_for(self, index: int, sample: Sample) -> tuple[np.ndarray, list[Box]]:
        return self.paste.mask_for(index, sample)

    def generate(self, normals: list[np.ndarray], masks: list[np.ndarray], seeds: list[int],
                 class_names: list[str | None]) -> list[np.ndarray]:
        """normals: whole images, H x W x C float32 in [0, 1]; masks from `make_mask`. Returns the composites
        with the window around each mask re-drawn by the DDPM (inside the mask; the pipeline keeps the rest)."""
        pasted = self.paste.generate(normals, masks, seeds, class_names)
        windows, crops, crop_masks = [], [], []
        for image, mask in zip(pasted, masks, strict=True):
            h, w = mask.shape
            y0, x0, wh, ww = mask_window(h, w, mask, self.ddpm.resolution, context=self.ddpm.context)
            windows.append((y0, x0, wh, ww))
            crops.append(match_channels(image[y0:y0 + wh, x0:x0 + ww], self.ddpm.channels))
            crop_masks.append(mask[y0:y0 + wh, x0:x0 + ww])
        drawn = self.ddpm.generate(crops, crop_masks, seeds, class_names)  # resized to the model and back
        out = []
        for image, mask, (y0, x0, wh, ww), new in zip(pasted, masks, windows, drawn, strict=True):
            result = image.copy()
            region = result[y0:y0 + wh, x0:x0 + ww]
            inside = mask[y0:y0 + wh, x0:x0 + ww]
            new = match_channels(new, image.shape[2])
            if self.keep_core is not None:
                keep = core_weight(inside, self.keep_core)[..., None]
                new = keep * region + (1 - keep) * new
            region[inside] = new[inside]
            out.append(result)
        return out


def core_weight(mask: np.ndarray, core: float) -> np.ndarray:
    """H x W in [0, 1]: 0 on the mask's edge pixels rising to 1 at `core` of the way to its deepest pixel (per
    region, so each defect of a mask keeps its own core; 0 outside). A one-pixel-wide region is all edge."""
    count, regions = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    depth = cv2.distanceTransform(np.pad(mask.astype(np.uint8), 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
    weight = np.zeros(mask.shape, np.float32)
    for r in range(1, count):
        here = regions == r
        weight[here] = np.clip((depth[here] - 1) / max(core * (float(depth[here].max()) - 1), 1e-6), 0, 1)
    return weight


def ddpm_generator(model: str | Path, labeled: str | Path | None = None, strength: float | None = None,
                   blend: str | None = None, keep_core: float | None = None, augment: str | None = None,
                   **options: Any):
    """The factory of DDPM model folders: with `labeled`, the harmonized transplant of its defects; else the
    DDPM's own generator (perturb-and-denoise, or conditional inpainting)."""
    if labeled is None:
        for name, value in (("keep_core", keep_core), ("augment", augment), ("blend", blend)):
            if value is not None:
                raise DefectgenError(None, f"`{name}` belongs to the transplant: give `labeled` too")
        return DdpmGenerator(model, strength=strength, **options)
    return TransplantGenerator(model, labeled, DEFAULT_STRENGTH if strength is None else strength, blend, keep_core,
                               augment, **options)
