"""Training data for the diffusion models, apart from the networks (models.py) and their losses (losses.py): how
a run reads its samples, and the examples the loop (training.py) draws batches from.

Every example set has `len()` and `example(index, rng)` -> a dict of tensors (training.TrainingData); all the
randomness of an example (crop, flip, mask) comes from `rng`, so a batch is a pure function of (seed, step).
  ImageExamples          normal images for the unconditional DDPM
  InpaintExamples        labeled defects (image, mask, class) plus normals under Perlin masks, conditional DDPM
  InpaintCaptionExamples labeled defects with captions for the inpainting LDM
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from defectgen.diffusion.models import box_geometry
from defectgen.errors import DefectgenError
from defectgen.io.datasets import open_dataset
from defectgen.io.images import mask_window, match_channels, resize, to_float
from defectgen.masks import MaskGenerator
from defectgen.prompts import Material


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """H x W x C float in [0, 1] -> C x H x W in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float() * 2.0 - 1.0


# ---- the DDPMs -------------------------------------------------------------------------------------------------

class ImageExamples:
    """Normal images for the unconditional model: random crops (or resized copies), random horizontal flips."""

    def __init__(self, images: list[np.ndarray], resolution: int, channels: int, crop: str = "random",
                 context: float = 1.0):
        self.images, self.resolution, self.channels, self.crop = images, resolution, channels, crop
        self.context = context

    def __len__(self) -> int:
        return len(self.images)

    def example(self, index: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        image = match_channels(to_float(self.images[index]), self.channels)
        image = crop_or_resize(image, None, self.resolution, self.crop, rng, self.context)[0]
        if rng.random() < 0.5:
            image = image[:, ::-1]
        return {"image": to_tensor(image)}


class InpaintExamples:
    """Labeled defects (image, mask, class) for the conditional model; normals, if given, are added with random
    Perlin masks and the null class, so the unconditional branch of guidance learns to fill in normal surface."""

    def __init__(self, labeled: list[tuple[np.ndarray, np.ndarray, int]], normals: list[np.ndarray],
                 resolution: int, channels: int, null_class: int, crop: str = "random", seed: int = 0,
                 context: float = 1.0):
        self.labeled, self.normals = labeled, normals
        self.resolution, self.channels, self.null_class, self.crop = resolution, channels, null_class, crop
        self.context = context
        self.masks = MaskGenerator("perlin", seed=seed)

    def __len__(self) -> int:
        return len(self.labeled) + len(self.normals)

    def example(self, index: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        if index < len(self.labeled):
            image, mask, cls = self.labeled[index]
        else:
            image, cls = self.normals[index - len(self.labeled)], self.null_class
            mask = self.masks(int(rng.integers(2**31)), image.shape[0], image.shape[1])[0]
        image = match_channels(to_float(image), self.channels)
        image, mask = crop_or_resize(image, mask, self.resolution, self.crop, rng, self.context)
        if rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        return {"image": to_tensor(image), "mask": torch.from_numpy(mask[None].astype(np.float32)),
                "class": torch.tensor(cls, dtype=torch.long), "box": torch.from_numpy(box_geometry(mask))}


def crop_or_resize(image: np.ndarray, mask: np.ndarray | None, size: int, crop: str,
                   rng: np.random.Generator, context: float = 1.0) -> tuple[np.ndarray, np.ndarray | None]:
    """A size x size window: cut at native scale (`crop` random; around the mask when there is one; `context`
    times `size` at least, see `mask_window`), or the image resized (`crop` resize, or an image no larger than
    the window)."""
    h, w = image.shape[:2]
    side = round(size * context)
    if crop == "random" and (h > side or w > side):
        if mask is not None:
            y0, x0, ch, cw = mask_window(h, w, mask, size, rng, context=context)
        else:
            ch, cw = min(side, h), min(side, w)
            y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        image = image[y0:y0 + ch, x0:x0 + cw]
        mask = None if mask is None else mask[y0:y0 + ch, x0:x0 + cw]
    shrink = image.shape[0] > size or image.shape[1] > size
    image = resize(image, size, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    if mask is not None:
        mask = resize(mask.astype(np.uint8), size, size, nearest=True).astype(bool)
    return image, mask


def read_training_samples(normals, labeled, on_bad: str = "error") -> tuple[list, list]:
    """(normal samples, labeled defect samples), read into memory; an empty source is a DefectgenError."""
    normal_samples = []
    if normals is not None:
        ds = open_dataset(normals, on_bad=on_bad)
        if ds.format == "mvtec":
            ds = ds.select(split="train", normal=True)
        else:
            ds = ds.select(normal=True)
        if not len(ds):
            raise DefectgenError(normals, "no normal images found")
        normal_samples = ds.read_all("normal", required=True)
        _warn_skipped(ds)
    labeled_samples = []
    if labeled is not None:
        ds = open_dataset(labeled, on_bad=on_bad).labeled_defects()
        if not len(ds):
            raise DefectgenError(labeled, "no labeled defects (images with masks or boxes) found")
        labeled_samples = _with_defect_pixels(ds.read_all("labeled", required=True), labeled)
        _warn_skipped(ds)
    return normal_samples, labeled_samples


def _warn_skipped(ds) -> None:
    for problem in ds.skipped:
        sys.stderr.write(f"warning: skipped unreadable {problem}\n")


def _with_defect_pixels(samples: list, source) -> list:
    """The labeled samples whose mask (or boxes) marks at least one pixel; each one without is named in a warning,
    and none left is an error: a conditional model trained on empty masks learns nothing of defects."""
    kept = []
    for s in samples:
        if s.defect_mask().any():
            kept.append(s)
        else:
            sys.stderr.write(f"warning: {s.mask_path or s.path}: empty mask, not a labeled defect; skipped\n")
    if not kept:
        raise DefectgenError(source, f"every one of the {len(samples)} labeled image(s) has an empty mask: no "
                             "defect to learn from")
    return kept


def fingerprint(paths: list[Path]) -> dict[str, Any]:
    """sha256 over the training files' bytes (sorted), so a model records exactly which data made it."""
    digest = hashlib.sha256()
    for p in sorted(set(paths)):
        digest.update(p.name.encode())
        digest.update(hashlib.sha256(p.read_bytes()).digest())
    return {"sha256": digest.hexdigest(), "files": len(set(paths))}


# ---- the inpainting LDM ------------------------------------------------------------------------------------------

@dataclass
class LabeledDefect:
    image: np.ndarray  # H x W x C uint8/uint16
    mask: np.ndarray   # H x W bool
    caption: str


class InpaintCaptionExamples:
    """Labeled defects as (pixels, mask, caption ids) at `resolution`: a square window around the real mask,
    resized, so small defects are seen large enough. Captions drop to "" at `caption_dropout` for guidance."""

    def __init__(self, items: list[LabeledDefect], tokenizer, resolution: int, caption_dropout: float = 0.1):
        self.items = items
        self.resolution = resolution
        self.caption_dropout = caption_dropout
        captions = sorted({it.caption for it in items} | {""})
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        self.ids = dict(zip(captions, ids, strict=True))

    def __len__(self) -> int:
        return len(self.items)

    def example(self, index: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        it = self.items[index]
        h, w = it.mask.shape
        y0, x0, wh, ww = mask_window(h, w, it.mask, self.resolution, rng)
        image = match_channels(to_float(it.image[y0:y0 + wh, x0:x0 + ww]), 3)
        mask = it.mask[y0:y0 + wh, x0:x0 + ww].astype(np.float32)
        r = self.resolution
        image = cv2.resize(image, (r, r), interpolation=cv2.INTER_AREA if wh > r else cv2.INTER_LINEAR)
        image = image.reshape(r, r, -1)
        mask = cv2.resize(mask, (r, r), interpolation=cv2.INTER_NEAREST)
        if rng.random() < 0.5:  # defects have no handedness
            image, mask = image[:, ::-1], mask[:, ::-1]
        caption = "" if rng.random() < self.caption_dropout else it.caption
        return {"pixels": to_tensor(np.ascontiguousarray(image)),
                "mask": torch.from_numpy(np.ascontiguousarray(mask))[None].float(),
                "input_ids": self.ids[caption]}


def captions_for(class_names: list[str], material: Material | None, seed: int = 0) -> dict[str, str]:
    """One caption per class: drawn from the material's prompt library, else a plain sentence naming the class."""
    rng = np.random.default_rng(seed)
    if material is None:
        return {c: f"a photo of a surface with {c.replace('_', ' ')} defect" for c in class_names}
    return {c: material.caption(c, rng) for c in class_names}


def read_labeled_defects(labeled: str | Path, fmt: str, captions_of) -> tuple[list[LabeledDefect], list[str]]:
    """Every labeled defect of `labeled` with its mask and its class's caption (`captions_of(classes)`), and the
    classes; an empty mask is a DefectgenError naming its file."""
    dataset = open_dataset(labeled, fmt).select(normal=False)
    if len(dataset) == 0:
        raise DefectgenError(labeled, "no labeled defects (images with masks or boxes) to fine-tune on")
    classes = dataset.classes or ["defect"]
    captions = captions_of(classes)
    items = []
    for s in dataset:
        mask = s.defect_mask()
        if not mask.any():
            raise DefectgenError(s.mask_path or s.path, "empty defect mask")
        items.append(LabeledDefect(s.image, mask, captions[s.class_name or "defect"]))
    return items, classes
