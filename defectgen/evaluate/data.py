"""The inputs of the validation experiment as typed records: the normals, the real test set (`TestSet`), real
labeled defects (`LabeledSet`), the synthetic sets and each run's training set (`TrainingSet`), all read from any
layout `open_dataset` reads and brought to the one model input size the test set gives (`load_inputs`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from defectgen.errors import DefectgenError, warn
from defectgen.io.datasets import open_dataset
from defectgen.io.images import fit_mask, fit_uint8, read_image, stack_or_list
from defectgen.io.resolution import Resolution, parse_resolution
from defectgen.io.sample import Sample

_SOURCE_KEYS = ("source", "source_image", "source_path", "normal", "normal_path")
# the model input: (H, W), an int for a square, or None for images at their native size (tiles)
Size = tuple[int, int] | int | None
Images = np.ndarray | list[np.ndarray]  # an array, or a list where images of several sizes stay at their own


# ---- the records ----------------------------------------------------------------------------------------------

@dataclass
class TestSet:
    """The real test set: model inputs (`images`) at `size`, the model input (H, W) the resolution gives the
    set's most common image size (None: native size, for tiles), and at each image's own size the `originals`
    (uint8 with the run's channels), bool `masks` (all-False for normals), ground-truth `boxes` ({"bbox": [x, y,
    w, h], "class"}) and `sizes`; `labels` (True: defect), class names, paths, and `box_classes`: two or more
    make a multi-class detection test, scored with COCO mAP too."""

    __test__ = False  # not a pytest test class

    images: Images
    size: tuple[int, int] | None
    originals: list[np.ndarray]
    sizes: list[tuple[int, int]]
    masks: list[np.ndarray]
    labels: np.ndarray
    classes: list[str]
    paths: list[Path | None]
    boxes: list[list[dict[str, Any]]]
    box_classes: list[str]

    def defect_classes(self) -> list[str]:
        """Every defect class the test set names, by image or by box."""
        return sorted({c for c in self.classes if c != "good"} | set(self.box_classes))


@dataclass
class TrainingSet:
    """One run's defects (the normals are passed beside it): images, masks, the clean images they were painted on
    (None where there are none: real defects), class label maps indexed into `class_names` (0: no defect), how
    many images are synthetic and how many real, and `boxes`: per image its layout's boxes ({"bbox": [x, y, w,
    h], "class"}) or None (its mask's regions serve), or None for the whole set. `TrainingSet()` is the empty set
    (the normals alone)."""

    images: Images | None = None
    masks: Images | None = None
    cleans: Images | None = None
    labels: Images | None = None
    class_names: list[str] = field(default_factory=list)
    synthetic_images: int = 0
    real_images: int = 0
    boxes: list[list[dict[str, Any]] | None] | None = None

    def __post_init__(self):
        self.class_names = list(self.class_names)

    @classmethod
    def empty(cls) -> TrainingSet:
        return cls()

    def with_cleans(self) -> TrainingSet:
        """The set with a clean image for every defect: real defects have none, so each one's defect is inpainted
        from its surroundings (an approximation; AST's student learns to give the clean image's features)."""
        if self.cleans is not None or self.images is None:
            return self
        cleans = stack_or_list([_inpainted(i, m) for i, m in zip(self.images, self.masks, strict=True)])
        return TrainingSet(self.images, self.masks, cleans, self.labels, self.class_names, self.synthetic_images,
                           self.real_images, self.boxes)

    def merge(self, other: TrainingSet) -> TrainingSet:
        """Both sets in one: classes merged by name, `other`'s label maps re-indexed; where only one side has clean
        images, the other's are inpainted (`with_cleans`)."""
        names = self.class_names + [c for c in other.class_names if c not in self.class_names]
        remap = np.arange(256, dtype=np.uint8)  # IGNORE (255) stays left out
        remap[:len(other.class_names) + 1] = [0] + [names.index(c) + 1 for c in other.class_names]
        if (self.cleans is None) != (other.cleans is None):
            self, other = self.with_cleans(), other.with_cleans()
        cleans = None if self.cleans is None or other.cleans is None else _join(self.cleans, other.cleans)
        boxes = None
        if self.boxes is not None or other.boxes is not None:
            boxes = [*(self.boxes or [None] * len(self.images)), *(other.boxes or [None] * len(other.images))]
        return TrainingSet(_join(self.images, other.images), _join(self.masks, other.masks), cleans,
                           _join(self.labels, [remap[x] for x in other.labels]), names,
                           self.synthetic_images + other.synthetic_images, self.real_images + other.real_images,
                           boxes)


@dataclass
class LabeledSet:
    """Real labeled defects at the model input size: images, masks, class label maps indexed into `class_names`,
    the layout's own boxes per image (None: a mask's regions serve) and the samples as read (for copypaste)."""

    images: Images
    masks: Images
    labels: Images
    class_names: list[str]
    boxes: list[list[dict[str, Any]] | None]
    samples: list[Sample]

    def training_set(self) -> TrainingSet:
        """The labeled defects alone as a training set (the `real` baseline)."""
        return TrainingSet(self.images, self.masks, None, self.labels, self.class_names,
                           real_images=len(self.images), boxes=self.boxes)

    def share(self, share: float, seed: int) -> LabeledSet:
        """`share` of the labeled defects, drawn per class with `seed` (at least one of each class, rounded up):
        the lower points of the real-only learning curve."""
        by_class: dict[str, list[int]] = {}
        for i, s in enumerate(self.samples):
            by_class.setdefault(_class_or_defect(s), []).append(i)
        rng = np.random.default_rng([seed, 13])
        keep = sorted(i for _, idx in sorted(by_class.items())
                      for i in rng.permutation(idx)[: max(1, int(np.ceil(share * len(idx))))].tolist())
        return LabeledSet(stack_or_list([self.images[i] for i in keep]), stack_or_list([self.masks[i] for i in keep]),
                          stack_or_list([self.labels[i] for i in keep]), self.class_names,
                          [self.boxes[i] for i in keep], [self.samples[i] for i in keep])


@dataclass
class Inputs:
    """Everything the runs are made from, at the model input the test set gives: the normals (N x H x W x C uint8,
    or a list at native size), their channels, the test set, the labeled defects (None without `real_labeled`),
    the synthetic set as a training set (None without `synthetic`) with how its clean normals were found
    (`clean_sources`), and the unlabeled images of `semi` (None without)."""

    normals: Images
    channels: int
    test_set: TestSet
    labeled: LabeledSet | None = None
    synthetic: TrainingSet | None = None
    clean_sources: dict[str, int] | None = None
    unlabeled: np.ndarray | None = None


# ---- images at the model input ----------------------------------------------------------------------------------

def _hw(size: Size) -> tuple[int, int] | None:
    return (size, size) if isinstance(size, (int, np.integer)) else (None if size is None else tuple(size))


def fit(image: np.ndarray, size: Size, channels: int) -> np.ndarray:
    """A stored image as the detectors take it: uint8 with `channels`, at `size` (None: its own size)."""
    h, w = _hw(size) or image.shape[:2]
    return fit_uint8(image, h, w, channels)


def _fit_mask(mask: np.ndarray, size: Size) -> np.ndarray:
    return fit_mask(mask, *_hw(size)) if size is not None else np.asarray(mask, bool)


def _join(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> Images:
    return stack_or_list([*a, *b])


def _scaled_box(b, h: int, w: int, size: tuple[int, int]) -> list[float]:
    """A Box on an h x w image as [x, y, w, h] on the image of `size` (H, W) the detectors see."""
    fx, fy = size[1] / w, size[0] / h
    return [b.x0 * fx, b.y0 * fy, (b.x1 - b.x0) * fx, (b.y1 - b.y0) * fy]


def _class_or_defect(s: Sample) -> str:
    return s.class_name if s.class_name not in (None, "good") else "defect"


def _boxes_of(s: Sample, mask: np.ndarray | None) -> list[dict[str, Any]]:
    """Ground-truth boxes in the image's own pixels: a mask file's connected components (one box per defect
    region), else the layout's own boxes (VOC, COCO)."""
    default = _class_or_defect(s)
    if s.mask_path is not None and mask is not None:
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        return [{"bbox": [float(v) for v in stats[i, :4]], "class": default} for i in range(1, n)]
    return [{"bbox": _scaled_box(b, s.height, s.width, (s.height, s.width)), "class": b.label or default}
            for b in s.boxes]


def _label_map(s: Sample, mask: np.ndarray, names: list[str]) -> np.ndarray:
    """Ints at the mask's size: 0 outside `mask`, 1 + index into `names` (extended as classes appear) inside; a
    multi-class image's pixels take the class of the smallest box holding them, the rest the image's class."""
    def index(name: str | None) -> int:
        name = name if name not in (None, "good") else "defect"
        if name not in names:
            names.append(name)
        return names.index(name) + 1

    out = np.zeros(mask.shape, np.uint8)
    labels = {b.label for b in s.boxes if b.label}
    if len(labels) > 1:
        for b in sorted(s.boxes, key=lambda b: -(b.x1 - b.x0) * (b.y1 - b.y0)):
            x, y, w, h = _scaled_box(b, s.height, s.width, mask.shape)
            out[int(np.floor(y)):int(np.ceil(y + h)), int(np.floor(x)):int(np.ceil(x + w))] = index(b.label)
        out[~mask] = 0
    out[mask & (out == 0)] = index(s.class_name if s.class_name not in (None, "good")
                                   else next(iter(labels), None))
    return out


def labels_from_classes(masks: Sequence[np.ndarray], per_image: Sequence[str]) -> tuple[Images, list[str]]:
    """Label maps of masks whose images each hold one class (`per_image`), and the class names they index."""
    names = sorted(set(per_image))
    return stack_or_list([np.asarray(m, np.uint8) * (names.index(c) + 1) for m, c in zip(masks, per_image,
                                                                                         strict=True)]), names


def _relabel(label_map: np.ndarray, from_names: Sequence[str], names: list[str]) -> np.ndarray:
    """A label map indexed by `from_names`, re-indexed by `names` (extended with the classes it holds)."""
    remap = np.zeros(len(from_names) + 1, np.uint8)
    for k in np.unique(label_map[label_map > 0]):
        name = from_names[k - 1]
        if name not in names:
            names.append(name)
        remap[k] = names.index(name) + 1
    return remap[label_map]


def _subset(n: int, limit: int | None, seed: int) -> list[int]:
    if limit is None or limit >= n:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, size=limit, replace=False).tolist())


# ---- normals, test set, labeled defects, unlabeled images -------------------------------------------------------

def read_normals(train: Path, max_train: int | None, seed: int, progress: bool) -> list[Sample]:
    """The normal training images as read (a random subset of `max_train`)."""
    ds = open_dataset(train)
    ds = ds.select(split="train", normal=True) if ds.format == "mvtec" else ds.select(normal=True)
    if len(ds) == 0:
        raise DefectgenError(train, "no normal images found to train on (expected train/good/ or a folder of "
                             "normal images)")
    ds.entries = [ds.entries[i] for i in _subset(len(ds), max_train, seed)]
    return ds.read_all("normals", progress)


def _test_samples(test: Path, max_test: int | None, seed: int, progress: bool) -> list[Sample]:
    """The test images as read (a random subset of `max_test`): some defects, each with a mask or boxes."""
    ds = open_dataset(test)
    if ds.format == "mvtec" or "test" in ds.splits:  # an MVTec root, or a VOC root with train/ and test/
        ds = ds.select(split="test")
    if len(ds) == 0:
        raise DefectgenError(test, "no test images found (expected test/<class>/ in MVTec layout, or COCO)")
    ds.entries = [ds.entries[i] for i in _subset(len(ds), max_test, seed)]
    samples = ds.read_all("test set", progress)
    if all(s.is_normal for s in samples):
        raise DefectgenError(test, "the test set has no defect images: nothing to detect")
    for s in samples:
        if not s.is_normal and s.mask is None and not s.boxes:
            raise DefectgenError(test, f"defect image {s.path.name if s.path else '?'} has no mask; pixel metrics "
                                 "need ground-truth masks (ground_truth/<class>/<stem>_mask.png, COCO masks or "
                                 "VOC boxes)")
    return samples


def load_test(test: Path, resolution: Resolution | str | int | None, channels: int, max_test: int | None, seed: int,
              progress: bool) -> TestSet:
    """The real test set (`TestSet`) at the model input `resolution` gives its most common image size (None:
    native size, for tiles)."""
    samples = _test_samples(test, max_test, seed, progress)
    normal = [s.is_normal for s in samples]
    sizes = [(s.height, s.width) for s in samples]
    size = None if resolution is None else parse_resolution(resolution).for_sizes(sizes)
    masks = [s.defect_mask() if not n else np.zeros(hw, bool) for s, n, hw in zip(samples, normal, sizes,
                                                                                  strict=True)]
    boxes = [[] if n else _boxes_of(s, m) for s, m, n in zip(samples, masks, normal, strict=True)]
    box_classes = sorted({b["class"] for bs in boxes for b in bs})
    if not any(normal) and len(box_classes) < 2:
        raise DefectgenError(test, "the test set has no normal images: image AUROC needs both kinds")
    originals = [fit(s.image, None, channels) for s in samples]
    return TestSet(
        images=originals if size is None else np.stack([fit(s.image, size, channels) for s in samples]),
        size=size, originals=originals, sizes=sizes, masks=masks, labels=np.array([not n for n in normal]),
        classes=["good" if n else (s.class_name or "defect") for s, n in zip(samples, normal, strict=True)],
        paths=[s.path for s in samples], boxes=boxes, box_classes=box_classes)


def _labeled_samples(labeled: Path, progress: bool) -> list[Sample]:
    ds = open_dataset(labeled)
    if ds.format == "mvtec":
        ds = ds.select(split="labeled")
        if len(ds) == 0:
            raise DefectgenError(labeled, "MVTec folder without a labeled/ split (labeled/<class>/<stem>.png with "
                                 "<stem>_mask.png)")
    elif "train" in ds.splits:
        ds = ds.select(split="train")
    samples = [s for s in ds.read_all("labeled defects", progress) if not s.is_normal]
    samples = [s for s in samples if s.boxes or (s.mask is not None and s.mask.any())]
    if not samples:
        raise DefectgenError(labeled, "no labeled defects with masks or boxes found (expected <stem>_mask.png "
                             "beside each image, labeled/<class>/ in an MVTec folder, VOC boxes or COCO "
                             "annotations)")
    return samples


def load_labeled(labeled: Path, size: Size, channels: int, test_classes: Sequence[str], progress: bool
                 ) -> LabeledSet:
    """Real labeled defects (any layout; an MVTec root gives its labeled/ split, a VOC root its train/ split) at
    `size` ((H, W), a square's side, or None: their own); every class must occur in `test_classes`."""
    samples = _labeled_samples(labeled, progress)
    names: list[str] = []
    masks = [_fit_mask(s.defect_mask(), size) for s in samples]
    label_maps = [_label_map(s, m, names) for s, m in zip(samples, masks, strict=True)]
    missing = sorted(set(names) - set(test_classes))
    if missing:
        raise DefectgenError(labeled, f"labeled class(es) {', '.join(missing)} do not occur in the test set "
                             f"(its classes: {', '.join(sorted(test_classes)) or 'none'})")
    # the layout's own boxes at the model size, for box detectors (None: a mask's regions serve)
    boxes = [[{"bbox": _scaled_box(b, s.height, s.width, m.shape), "class": b.label or _class_or_defect(s)}
              for b in s.boxes] if s.boxes and s.mask_path is None else None
             for s, m in zip(samples, masks, strict=True)]
    return LabeledSet(stack_or_list([fit(s.image, size, channels) for s in samples]), stack_or_list(masks),
                      stack_or_list(label_maps), names, boxes, samples)


def load_unlabeled(folder: Path, size: Size, channels: int, progress: bool) -> np.ndarray:
    """Every image under `folder` (any layout; labels are not read) at the model input `size`."""
    samples = open_dataset(folder).read_all("unlabeled images", progress)
    return np.stack([fit(s.image, size, channels) for s in samples])


# ---- synthetic sets ---------------------------------------------------------------------------------------------

def _declared_sources(synthetic: Path) -> dict[Path, Path]:
    """image path -> source normal path, where the synthetic set's annotations.json names one."""
    ann = synthetic / "annotations.json" if synthetic.is_dir() else synthetic
    try:
        data = json.loads(ann.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    base, found = ann.parent, {}
    for im in data.get("images", []):
        src = next((im[k] for k in _SOURCE_KEYS if isinstance(im.get(k), str)), None)
        name = im.get("file_name")
        if not src or not name:
            continue
        img = next((p for p in (base / name, base / "images" / name) if p.is_file()), None)
        cand = [Path(src), base / src]
        srcp = next((p for p in cand if p.is_file()), None)
        if img is not None and srcp is not None:
            found[img.resolve()] = srcp.resolve()
    return found


def _clean_of(image: np.ndarray, mask: np.ndarray, normals_small: np.ndarray, normals: Sequence[np.ndarray]
              ) -> tuple[np.ndarray, str]:
    """The clean normal a synthetic image was made from: the pipeline keeps the outside of the mask
    bit-exact, so the training normal (of the image's size) that matches outside the mask is it; failing that,
    the masked region is inpainted from its surroundings (an approximation the report counts)."""
    small = cv2.resize(image.astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA).reshape(32, 32, -1)
    outside = ~cv2.resize(cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)), (32, 32),
                          interpolation=cv2.INTER_NEAREST).astype(bool)
    if outside.sum() > 32:
        diff = np.abs(normals_small - small[None]).mean(axis=3)[:, outside].mean(axis=1)
        diff[[n.shape != image.shape for n in normals]] = np.inf  # at native size, normals of other sizes
        best = int(np.argmin(diff))
        if diff[best] < 2.0:
            return normals[best], "matched"
    return _inpainted(image, mask), "inpainted"


def _inpainted(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = cv2.inpaint(image if image.shape[2] == 3 else image[:, :, 0], mask.astype(np.uint8), 5, cv2.INPAINT_TELEA)
    return out.reshape(image.shape)


def _synthetic_samples(folders: Sequence[Path], progress: bool) -> tuple[list[Sample], dict[Path, Path]]:
    """The samples with defect masks of every folder, and the source normals their annotations declare."""
    samples, declared = [], {}
    for folder in folders:
        got = [s for s in open_dataset(folder).read_all("synthetic set", progress)
               if s.mask is not None and s.mask.any()]
        if not got:
            raise DefectgenError(folder, "the synthetic set has no defect masks (expected annotations.json with "
                                 "segmentations, or images with <stem>_mask.png)")
        samples += got
        declared.update(_declared_sources(folder))
    return samples, declared


@dataclass
class _Cleans:
    """Where a synthetic image's clean normal is found: a labeled canvas, a declared file, a matching normal."""

    size: Size
    channels: int
    normals: Images
    labeled: LabeledSet | None
    declared: dict[Path, Path]
    how: dict[str, int] = field(default_factory=lambda: {"declared": 0, "matched": 0, "inpainted": 0,
                                                         "on_labeled_canvas": 0})

    def __post_init__(self):
        self.normals_small = np.stack([cv2.resize(n.astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA)
                                       .reshape(32, 32, -1) for n in self.normals]) if len(self.normals) else None
        self.canvas_index = {s.path.resolve(): i for i, s in enumerate(self.labeled.samples)
                             if s.path is not None} if self.labeled is not None else {}

    def one(self, s: Sample, names: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """A synthetic sample's image, mask, label map and clean image at the model input; a canvas's own
        defects join the painted one's mask and label map."""
        img, m = fit(s.image, self.size, self.channels), _fit_mask(s.mask, self.size)
        lab = _label_map(s, m, names)
        src = self.declared.get(s.path.resolve()) if s.path is not None else None
        canvas = self.canvas_index.get(src) if src is not None else None
        if canvas is not None:  # the canvas's own defects, under the painted one
            under = _relabel(self.labeled.labels[canvas], self.labeled.class_names, names)
            lab = np.where(m, lab, under)
            m = m | (under > 0)
            self.how["on_labeled_canvas"] += 1
            clean, kind = self.labeled.images[canvas], "declared"
        elif src is not None:
            clean, kind = fit(read_image(src), self.size, self.channels), "declared"
        elif self.normals_small is not None:
            clean, kind = _clean_of(img, m, self.normals_small, self.normals)
        else:
            clean, kind = _inpainted(img, m), "inpainted"
        self.how[kind] += 1
        return img, m, lab, clean


def load_synthetic(synthetic: Path | Sequence[Path], size: Size, channels: int, normals: Images,
                   progress: bool, labeled: LabeledSet | None = None) -> tuple[TrainingSet, dict[str, int]]:
    """Synthetic defect images, masks, their clean normals and class label maps (see `_label_map`) at `size`
    ((H, W), a square's side, or None: their own) as a training set, and how the cleans were found (declared,
    matched, inpainted, on_labeled_canvas). Several sets (one per class, say) pool.

    labeled: the real labeled defects. A synthetic image painted on one of them (a dataset without normal
    images, such as NEU-DET, paints on its labeled defects) keeps that image's own labeled defects in its mask
    and label map: they are in the picture, and training on them as background would teach a lie. Its clean
    image is the labeled image already in memory."""
    folders = [Path(synthetic)] if isinstance(synthetic, (str, Path)) else [Path(f) for f in synthetic]
    samples, declared = _synthetic_samples(folders, progress)
    cleans = _Cleans(size, channels, normals, labeled, declared)
    names: list[str] = []
    images, masks, labels, clean = zip(*(cleans.one(s, names) for s in samples), strict=True)
    return (TrainingSet(stack_or_list(images), stack_or_list(masks), stack_or_list(clean), stack_or_list(labels),
                        names, synthetic_images=len(images)), cleans.how)


# ---- all inputs ---------------------------------------------------------------------------------------------------

def load_inputs(train: Path | None, test: Path, synthetic: Sequence[Path] | None, real_labeled: Path | None,
                resolution: Resolution | None, max_train: int | None, max_test: int | None, seed: int,
                progress: bool, semi: Path | None = None, unused_labeled: str | None = None) -> Inputs:
    """Normals, test set, labeled defects, the synthetic set as training set and the unlabeled images, all at the
    model input `resolution` gives the test set (None: at their own size, for tiles). unused_labeled: said as a
    warning once the labeled defects are read, when no run uses them (they are read all the same: a bad input is
    reported, not ignored)."""
    normal_samples = read_normals(train, max_train, seed, progress) if train is not None else []
    # gray only when every normal is gray; without normals the defect images train, on 3 channels
    channels = 1 if normal_samples and all(s.channels == 1 for s in normal_samples) else 3
    test_set = load_test(test, resolution, channels, max_test, seed, progress)
    size = test_set.size
    normals = stack_or_list([fit(s.image, size, channels) for s in normal_samples])
    if not normal_samples:
        normals = np.zeros((0, *(size or (32, 32)), 3), np.uint8)
    del normal_samples
    inputs = Inputs(normals, channels, test_set)
    if real_labeled is not None:
        inputs.labeled = load_labeled(real_labeled, size, channels, test_set.defect_classes(), progress)
        if unused_labeled:
            warn(unused_labeled)
    inputs.unlabeled = load_unlabeled(semi, size, channels, progress) if semi is not None else None
    if synthetic is not None:
        inputs.synthetic, inputs.clean_sources = load_synthetic(synthetic, size, channels, normals, progress,
                                                                inputs.labeled)
    return inputs
