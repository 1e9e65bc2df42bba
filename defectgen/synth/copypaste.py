"""The copy-paste baseline: real labeled defects (their pixels inside their masks), augmented with albumentations
(flips, rotation, scale, elastic warp, brightness/contrast; the mask follows the image) and pasted onto normal
images where the part is, optionally with Poisson (seamless) blending.

A pasted defect brings its own mask, so this generator is also the `MaskSource` of its samples (masks/source.py):
the pipeline asks `mask_for(index, sample)` (that is, `make_mask(normal, class_name, seed)`) for the mask and then
`generate` fills it. Both rebuild the same augmented defect from the sample's seed, so the written mask is exactly
where the pasted pixels are.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np

from defectgen.errors import DefectgenError
from defectgen.io.images import from_float, match_channels, resize, stack_or_list, to_float
from defectgen.io.sample import Box, Sample
from defectgen.masks.placement import estimate_foreground, on_foreground
from defectgen.masks.source import with_box
from defectgen.synth.base import Abilities, register_generator

BLENDS = ("paste", "seamless")
# full: random zoom, rotation, elastic warp and brightness/contrast (Ghiasi et al.'s copy-paste: variety);
# flips: the defect as it was recorded, only mirrored (faithful: a rotated patch of a striated surface is a defect
# of its own, and a harmonizing model supplies the variety)
AUGMENTS = ("full", "flips")
_MARGIN = 2  # context kept around a defect's box: the linear interpolation of a rotation reads one pixel out
_SEAMLESS_RING = 3  # OpenCV's seamlessClone keeps about this many pixels inside the mask's edge at the destination


@dataclass
class Defect:
    """One labeled defect: a crop of its image (native dtype, with a small context margin), its mask in that crop,
    its class, and the (H, W) of the image it came from (to rescale it with that image)."""

    image: np.ndarray
    mask: np.ndarray
    class_name: str
    source_size: tuple[int, int]


def defects_from(samples: Iterable[Sample]) -> list[Defect]:
    """The defects of labeled samples: with a pixel mask, the mask's part inside each box (one box per defect for
    MVTec and pairs; one per annotation for COCO); with boxes only (VOC), each box's whole region."""
    found = []
    for s in samples:
        if s.is_normal:
            continue
        full = s.defect_mask()
        boxes = s.boxes or [None]
        seen = set()
        for b in boxes:
            if b is None:
                part = full
            else:
                y0, x0 = max(int(np.floor(b.y0)), 0), max(int(np.floor(b.x0)), 0)
                y1, x1 = min(int(np.ceil(b.y1)), s.height), min(int(np.ceil(b.x1)), s.width)
                if (y0, x0, y1, x1) in seen:
                    continue
                seen.add((y0, x0, y1, x1))
                part = np.zeros_like(full)
                part[y0:y1, x0:x1] = full[y0:y1, x0:x1]
            if not part.any():
                continue
            ys, xs = np.nonzero(part)
            y0, x0 = max(int(ys.min()) - _MARGIN, 0), max(int(xs.min()) - _MARGIN, 0)
            y1, x1 = min(int(ys.max()) + 1 + _MARGIN, s.height), min(int(xs.max()) + 1 + _MARGIN, s.width)
            label = (b.label if b is not None else None) or s.class_name or "defect"
            found.append(Defect(s.image[y0:y1, x0:x1].copy(), part[y0:y1, x0:x1].copy(), label,
                                (s.height, s.width)))
    return found


def _resize(image: np.ndarray, mask: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Image and mask to h x w. The mask is area-resized and thresholded at half coverage (or half its peak, so a
    defect thinner than a pixel at the new size shrinks instead of vanishing)."""
    if image.shape[:2] == (h, w):
        return image, mask
    shrink = h < image.shape[0] or w < image.shape[1]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    out = resize(image, h, w, interpolation=interp)
    cover = resize(mask.astype(np.float32), h, w, interpolation=interp)
    peak = float(cover.max())
    return out, (cover >= min(0.5, 0.5 * peak)) if peak > 0 else np.zeros((h, w), bool)


def _tight(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    return image[y0:y1, x0:x1], mask[y0:y1, x0:x1]


class CopyPasteGenerator:
    """A `DefectGenerator` named "copypaste" that is also the `MaskSource` of its samples.

    labeled: a labeled dataset folder or COCO file (any layout `open_dataset` reads; an MVTec root gives its
    labeled/ split, else its test defects), or a list of `Sample`s. blend: "paste" (the defect's pixels as they
    are) or "seamless" (cv2.seamlessClone: the defect's gradients, the normal image's level at its edge).
    augment: "full" (the four below) or "flips" (random flips only; the four are ignored). scale: range of the
    random zoom; rotate: the largest rotation in degrees; elastic: probability of an elastic
    warp; photometric: brightness and contrast limit. match_scale: resize each defect by (normal size / size of
    the image it came from), for normals and labeled images brought to a common size separately (validation).
    A defect larger than the normal image is always scaled down to fit.
    """

    name = "copypaste"
    resolution = None
    channels = None
    abilities = Abilities(makes_own_masks=True, conditional=True)

    def __init__(self, labeled: str | Path | Sequence[Sample], blend: str = "paste",
                 scale: tuple[float, float] = (0.75, 1.25), rotate: float = 45.0, elastic: float = 0.3,
                 photometric: float = 0.2, match_scale: bool = False, fmt: str = "auto", augment: str = "full"):
        if blend not in BLENDS:
            raise DefectgenError(None, f"unknown blend {blend!r}; choose from {', '.join(BLENDS)}")
        if augment not in AUGMENTS:
            raise DefectgenError(None, f"unknown augment {augment!r}; choose from {', '.join(AUGMENTS)}")
        if augment == "flips":
            scale, rotate, elastic, photometric = (1.0, 1.0), 0.0, 0.0, 0.0
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"scale must satisfy 0 < low <= high, got {scale}")
        self.folder: Path | None = None
        if isinstance(labeled, (str, Path)):
            from defectgen.io.datasets import open_dataset

            self.folder = Path(labeled)
            self.defects = defects_from(open_dataset(labeled, fmt).labeled_defects())
        else:
            self.defects = defects_from(labeled)
        if not self.defects:
            raise DefectgenError(self.folder, "no defects with masks or boxes found to paste")
        self.by_class: dict[str, list[Defect]] = {}
        for d in self.defects:
            self.by_class.setdefault(d.class_name, []).append(d)
        counts = Counter(d.class_name for d in self.defects)
        self.class_distribution = {c: counts[c] / len(self.defects) for c in sorted(counts)}
        self.blend, self.augment = blend, augment
        self.scale = (float(scale[0]), float(scale[1]))
        self.rotate, self.elastic, self.photometric = float(rotate), float(elastic), float(photometric)
        self.match_scale = bool(match_scale)
        self._cache: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def info(self) -> dict[str, Any]:
        return {"model": "copypaste", "labeled": str(self.folder) if self.folder else "given samples",
                "defects": {c: len(d) for c, d in sorted(self.by_class.items())}, "blend": self.blend,
                "augment": self.augment, "scale": list(self.scale), "rotate": self.rotate, "elastic": self.elastic,
                "photometric": self.photometric, "match_scale": self.match_scale}

    def describe(self) -> dict[str, Any]:
        """The mask source's record in the run settings: the masks are the pasted defects' own."""
        return {"kind": "copypaste", "source": str(self.folder) if self.folder else "given samples",
                "masks": {c: len(d) for c, d in sorted(self.by_class.items())}}

    def check_class(self, class_name: str | None) -> None:
        if class_name is not None and class_name not in self.by_class:
            raise DefectgenError(self.folder, f"the labeled set knows no class {class_name!r}; it has: "
                                 f"{', '.join(sorted(self.by_class))}")

    # ---- one augmented defect per (seed, class, normal shape) ----------------------------------------------

    def _augment(self, image: np.ndarray, mask: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        side = max(mask.shape)
        transforms = [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            # fit_output: the canvas grows so a rotated or enlarged defect is never cut off
            A.Affine(scale=self.scale, rotate=(-self.rotate, self.rotate), fit_output=True,
                     interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                     border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=1.0),
            # a smooth warp (sigma a fifth of the crop) moving pixels by about 4% of its side at any size
            # (albumentations' displacement is about alpha * 0.85 / side at that sigma)
            A.ElasticTransform(alpha=0.05 * side**2, sigma=max(2.0, side / 5), interpolation=cv2.INTER_LINEAR,
                               mask_interpolation=cv2.INTER_NEAREST, border_mode=cv2.BORDER_CONSTANT,
                               fill=0, fill_mask=0, p=self.elastic),
            A.RandomBrightnessContrast(brightness_limit=self.photometric, contrast_limit=self.photometric,
                                       p=1.0 if self.photometric > 0 else 0.0),
        ]
        done = A.Compose(transforms, seed=int(seed))(image=image, mask=mask.astype(np.uint8))
        return np.clip(done["image"], 0.0, 1.0).astype(np.float32), done["mask"] > 0

    def _defect(self, seed: int, class_name: str | None, h: int, w: int, c: int) -> tuple[np.ndarray, np.ndarray]:
        """The augmented defect of a sample: a float crop (c channels) and its mask, tight to the mask, fitting
        inside h x w. Depends only on its arguments."""
        key = (int(seed), class_name, h, w, c)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        rng = np.random.default_rng(int(seed))
        pool = self.by_class.get(class_name, self.defects) if class_name is not None else self.defects
        d = pool[int(rng.integers(len(pool)))]
        image = match_channels(d.image.astype(np.float32) if d.image.dtype.kind == "f" else to_float(d.image), c)
        mask = d.mask
        if self.match_scale:
            sh, sw = d.source_size
            image, mask = _resize(image, mask, max(1, round(mask.shape[0] * h / sh)),
                                  max(1, round(mask.shape[1] * w / sw)))
        # replicated edges: a defect touching its image's border would otherwise be interpolated with black
        m = _MARGIN
        padded = cv2.copyMakeBorder(image, m, m, m, m, cv2.BORDER_REPLICATE).reshape(
            image.shape[0] + 2 * m, image.shape[1] + 2 * m, c)
        aug_image, aug_mask = self._augment(padded, np.pad(mask, m), int(rng.integers(2**31)))
        if aug_mask.any():
            image, mask = aug_image, aug_mask
        image, mask = _tight(image, mask)
        if mask.shape[0] > h or mask.shape[1] > w:
            f = min(h / mask.shape[0], w / mask.shape[1])
            image, mask = _resize(image, mask, min(h, max(1, int(mask.shape[0] * f))),
                                  min(w, max(1, int(mask.shape[1] * f))))
            image, mask = _tight(image, mask)
        result = (np.ascontiguousarray(image, np.float32), np.ascontiguousarray(mask))
        self._cache[key] = result
        if len(self._cache) > 64:
            self._cache.popitem(last=False)
        return result

    # ---- the mask source and the generator -----------------------------------------------------------------

    def make_mask(self, normal: np.ndarray, class_name: str | None, seed: int) -> np.ndarray:
        """Where sample `seed`'s defect goes on `normal` (H x W x C, uint8/uint16 or float in [0, 1]): an H x W
        bool mask, the defect's mask placed wholly on the part's foreground where it fits (else where most of it
        does), at a position drawn from the seed."""
        h, w, c = normal.shape
        _, dm = self._defect(seed, class_name, h, w, c)
        native = from_float(normal, np.uint8) if normal.dtype.kind == "f" else normal
        ch, cw = dm.shape
        ys, xs = np.nonzero(on_foreground(dm, estimate_foreground(native)))
        k = int(np.random.default_rng([int(seed), 1]).integers(len(ys)))
        mask = np.zeros((h, w), bool)
        mask[ys[k]:ys[k] + ch, xs[k]:xs[k] + cw] = dm
        return mask

    def mask_for(self, index: int, sample: Sample) -> tuple[np.ndarray, list[Box]]:
        """The `MaskSource` side: sample's mask from `make_mask` on its normal, class and seed."""
        return with_box(self.make_mask(sample.image, sample.class_name, sample.seed), sample.class_name)

    def generate(self, normals: list[np.ndarray], masks: list[np.ndarray], seeds: list[int],
                 class_names: list[str | None]) -> list[np.ndarray]:
        """normals: H x W x C float32 in [0, 1]; each mask must come from `make_mask` with the same normal shape,
        class and seed (the defect is rebuilt from them and placed at the mask's box)."""
        return [self._one(np.asarray(n, np.float32), np.asarray(m, bool), s, c)
                for n, m, s, c in zip(normals, masks, seeds, class_names, strict=True)]

    def _one(self, normal: np.ndarray, mask: np.ndarray, seed: int, class_name: str | None) -> np.ndarray:
        h, w, c = normal.shape
        crop, dm = self._defect(seed, class_name, h, w, c)
        ch, cw = dm.shape
        ys, xs = np.nonzero(mask)
        y0, x0 = (int(ys.min()), int(xs.min())) if len(ys) else (0, 0)
        if (not len(ys) or y0 + ch > h or x0 + cw > w or int(mask.sum()) != int(dm.sum())
                or not np.array_equal(mask[y0:y0 + ch, x0:x0 + cw], dm)):
            raise ValueError("copypaste fills only the masks it made: call make_mask(normal, class_name, seed) "
                             "with the same normal shape, class and seed")
        src = normal.copy()
        src[y0:y0 + ch, x0:x0 + cw][dm] = crop[dm]
        if self.blend == "seamless":
            src = _seamless(normal, src, mask)
        out = normal.copy()
        out[mask] = src[mask]
        return out


def _seamless(normal: np.ndarray, src: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Poisson blending of `src` (the normal with the defect pasted) into `normal` over the mask.

    seamlessClone keeps a ring at the mask's edge equal to the destination, so it gets the mask grown by that
    ring; only the mask's pixels are used afterwards. It works on 8-bit RGB: the smooth correction it adds is
    taken at 8 bits and added to the full-precision pasted image, which keeps 16-bit detail."""
    pad = _SEAMLESS_RING + 2  # it also clears the mask's outermost image row and column

    def rgb8(x: np.ndarray) -> np.ndarray:
        x = np.repeat(x, 3, axis=2) if x.shape[2] == 1 else x
        return cv2.copyMakeBorder(from_float(x, np.uint8), pad, pad, pad, pad, cv2.BORDER_REFLECT_101)

    grown = cv2.dilate(mask.astype(np.uint8) * 255, np.ones((3, 3), np.uint8), iterations=_SEAMLESS_RING)
    grown = cv2.copyMakeBorder(grown, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    x, y, bw, bh = cv2.boundingRect(grown)
    src8, dst8 = rgb8(src), rgb8(normal)
    # the mask is passed as a copy: this OpenCV build erodes the array it is given in place
    blended = cv2.seamlessClone(src8, dst8, grown.copy(), (x + bw // 2, y + bh // 2), cv2.NORMAL_CLONE)
    h, w = mask.shape
    correction = (blended.astype(np.float32) - src8.astype(np.float32))[pad:pad + h, pad:pad + w] / 255.0
    if src.shape[2] == 1:
        correction = correction.mean(axis=2, keepdims=True)
    return np.clip(src + correction, 0.0, 1.0).astype(np.float32)


def copypaste_set(normals: Sequence[np.ndarray], labeled: list[Sample], n: int, seed: int, blend: str = "paste",
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """n copy-paste defects for the validation experiment (like `draem_set`): normals N x H x W x C uint8 (or a
    list of images of several sizes), labeled samples of any size (each defect is resized with its image to the
    normal's size). Returns images (n, H, W, C) uint8, masks (n, H, W) bool, the clean normals (n, H, W, C)
    (lists where the normals differ in size) and each sample's class name. Sample i depends only on (seed, i),
    with the same choices as `synthesize --model copypaste`."""
    from defectgen.synth.pipeline import choose_class, choose_normal, composite, sample_seed

    gen = CopyPasteGenerator(labeled, blend=blend, match_scale=True)
    images, masks, cleans, names = [], [], [], []
    for i in range(n):
        s = sample_seed(seed, i)
        normal = normals[choose_normal(seed, i, len(normals))]
        cls = choose_class(seed, i, None, gen.class_distribution)
        mask = gen.make_mask(normal, cls, s)
        out = gen.generate([to_float(normal)], [mask], [s], [cls])[0]
        images.append(composite(normal, out, mask))
        masks.append(mask)
        cleans.append(normal)
        names.append(cls)
    return stack_or_list(images), stack_or_list(masks), stack_or_list(cleans), names


@register_generator("copypaste")
def from_options(name: str = "copypaste", labeled: str | Path | None = None, blend: str | None = None,
                 augment: str | None = None, **_: object) -> CopyPasteGenerator:
    """Factory for `defectgen synthesize --model copypaste --labeled DIR [--blend paste|seamless]
    [--augment full|flips]`."""
    if labeled is None:
        raise DefectgenError(None, "the copypaste generator needs `labeled`: a labeled set whose defects it pastes")
    return CopyPasteGenerator(labeled, blend=blend or "paste", augment=augment or "full")
