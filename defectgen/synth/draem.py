"""The classic baseline that needs no training (DRAEM, Zavrtanik et al. 2021): a texture image, distorted by a
few random albumentations transforms, blended into the normal image inside the mask with a random opacity."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np

from defectgen.errors import DefectgenError
from defectgen.io.images import from_float, image_files, read_image, resize, to_float
from defectgen.synth.base import PLAIN, register_generator

# DRAEM draws three of these per anomaly; they change colour statistics and geometry so the pasted texture
# does not simply continue the surface around it.
_AUGMENTS = [
    lambda: A.RandomGamma(gamma_limit=(50, 200), p=1.0),
    lambda: A.RandomBrightnessContrast(brightness_limit=0.3, contrast_limit=0.3, p=1.0),
    lambda: A.Sharpen(p=1.0),
    lambda: A.HueSaturationValue(hue_shift_limit=50, sat_shift_limit=50, val_shift_limit=30, p=1.0),
    lambda: A.Solarize(p=1.0),
    lambda: A.Posterize(num_bits=(2, 5), p=1.0),
    lambda: A.InvertImg(p=1.0),
    lambda: A.Equalize(p=1.0),
    lambda: A.Affine(rotate=(-45, 45), p=1.0),
]


class DraemGenerator:
    """A `DefectGenerator` named "draem".

    textures: texture images (H x W x C arrays, any size) or a folder of images; None = each normal image
    itself, re-arranged (flipped, rotated, shifted) and distorted before pasting. opacity: the range of the
    blend factor inside the mask (DRAEM uses 1 - beta with beta in [0, 0.8]: 0.2..1.0).
    """

    name = "draem"
    resolution = None
    channels = None
    abilities = PLAIN  # one kind of defect, inside any mask

    def __init__(self, textures: str | Path | Sequence[np.ndarray] | None = None,
                 opacity: tuple[float, float] = (0.2, 1.0), n_augments: int = 3):
        self.texture_dir = None
        self._textures: list[np.ndarray] | None = None
        self._paths: list[Path] | None = None
        if isinstance(textures, (str, Path)):
            folder = Path(textures)
            if not folder.is_dir():
                raise DefectgenError(folder, "texture folder not found")
            self._paths = image_files(folder)
            if not self._paths:
                raise DefectgenError(folder, "no images found to take textures from")
            self.texture_dir = str(folder)
        elif textures is not None:
            self._textures = [np.asarray(t) for t in textures]
            if not self._textures:
                raise ValueError("textures is empty")
        if not 0 <= opacity[0] <= opacity[1] <= 1:
            raise ValueError(f"opacity must satisfy 0 <= low <= high <= 1, got {opacity}")
        self.opacity = (float(opacity[0]), float(opacity[1]))
        self.n_augments = int(n_augments)

    def info(self) -> dict[str, Any]:
        source = self.texture_dir or ("given images" if self._textures is not None else "the normal images")
        return {"model": "draem", "textures": source, "opacity": list(self.opacity), "n_augments": self.n_augments}

    def _texture(self, rng: np.random.Generator, normal: np.ndarray) -> np.ndarray:
        if self._paths is not None:
            return to_float(read_image(self._paths[int(rng.integers(len(self._paths)))]))
        if self._textures is not None:
            t = self._textures[int(rng.integers(len(self._textures)))]
            return t.astype(np.float32) / 255.0 if t.dtype == np.uint8 else (
                to_float(t) if t.dtype == np.uint16 else t.astype(np.float32))
        # the normal itself, re-arranged so the pasted texture is not aligned with what it covers
        t = np.rot90(normal, int(rng.integers(4)))
        if rng.random() < 0.5:
            t = t[:, ::-1]
        return np.roll(t, (int(rng.integers(t.shape[0])), int(rng.integers(t.shape[1]))), axis=(0, 1))

    def _one(self, normal: np.ndarray, mask: np.ndarray, seed: int) -> np.ndarray:
        rng = np.random.default_rng(int(seed))
        h, w, c = normal.shape
        tex = np.ascontiguousarray(self._texture(rng, normal))
        if tex.ndim == 2:
            tex = tex[:, :, None]
        tex = resize(tex, h, w, interpolation=cv2.INTER_LINEAR)
        # albumentations' colour transforms want 3-channel uint8
        rgb = np.repeat(tex, 3, axis=2) if tex.shape[2] == 1 else tex[:, :, :3]
        rgb8 = from_float(rgb, np.uint8)
        picks = rng.choice(len(_AUGMENTS), size=min(self.n_augments, len(_AUGMENTS)), replace=False)
        pipeline = A.Compose([_AUGMENTS[i]() for i in picks], seed=int(rng.integers(2**31)))
        rgb = pipeline(image=rgb8)["image"].astype(np.float32) / 255.0
        tex = rgb.mean(axis=2, keepdims=True) if c == 1 else rgb
        alpha = float(rng.uniform(*self.opacity))
        m = np.asarray(mask, dtype=np.float32)[:, :, None]
        return (normal * (1 - alpha * m) + tex * (alpha * m)).astype(np.float32)

    def generate(self, normals: list[np.ndarray], masks: list[np.ndarray], seeds: list[int],
                 class_names: list[str | None]) -> list[np.ndarray]:
        """normals: H x W x C float32 in [0, 1]; each result depends only on its own seed."""
        del class_names  # one kind of defect: texture paste
        return [self._one(np.asarray(n, np.float32), m, s) for n, m, s in zip(normals, masks, seeds, strict=True)]


@register_generator("draem")
def from_options(name: str = "draem", textures: str | Path | None = None, **_: object) -> DraemGenerator:
    """Factory for `defectgen synthesize --model draem [--textures DIR]`; other options do not apply."""
    return DraemGenerator(textures)
