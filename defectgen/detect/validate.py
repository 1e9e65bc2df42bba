"""`defectgen validate`: train a detector with a synthetic set and with each baseline in one run, score all on
the real test set, and write report.json, report.md, roc.png and anomaly-map overlays (`defectgen.report`
writes the files; this module runs the experiment).

Runs: `synthetic` (the normals plus the given synthetic set) and the baselines: `none` (normals only; for the
unsupervised detectors), `draem` (the classic DRAEM-style generator applied in memory to as many normals as the
synthetic set has images, Perlin masks), `copypaste` (real labeled defects pasted onto as many normals),
and for supervised detectors (seg) `real` (the labeled defects alone) and `real+synthetic` (labeled defects plus
the synthetic set: how a user would really use a generated set). Where the test set has boxes or masks of
several classes and the detector outputs boxes, COCO box mAP is measured too.

With `semi` (a folder of unlabeled images; seg), every run also gets a `RUN+pseudo` twin: the run's mean teacher
labels the unlabeled images, the labels that pass `defectgen.detect.semi`'s checks join the run's training set,
and a fresh student trains on both.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from defectgen.detect.backbone import SEPARATOR, TINY_WARNING, is_pretrained, load_backbone, resolve_backbone
from defectgen.detect.base import DetectorOptions, detector_names, get_detector
from defectgen.detect.semi import DefectReference, PseudoLabelRule, pseudo_label
from defectgen.detect.tiling import Tiled, check_tile, rescale_boxes, restore_maps
from defectgen.errors import DefectgenError, warn
from defectgen.io.datasets import open_dataset
from defectgen.io.images import fit_mask, fit_uint8, from_float, read_image, stack_or_list
from defectgen.io.output import OutputFolder
from defectgen.io.resolution import Resolution, parse_resolution
from defectgen.io.sample import Sample
from defectgen.metrics import METRICS, coco_map, evaluate  # noqa: F401 - METRICS: the CLI reads it from here
from defectgen.progress import above_bars, bar
from defectgen.report import (
    fmt_metric,
    json_safe,
    overlay_picks,
    write_overlays,
    write_roc,
    write_validation_report,
)
from defectgen.runtime import JobEstimate, hardware, pick_device

BASELINES = ("none", "draem", "copypaste", "real", "real+synthetic")
DEFAULT_BASELINES = ("none", "draem")
NEEDS_LABELED = ("copypaste", "real", "real+synthetic")
SUPERVISED_ONLY = ("real", "real+synthetic")  # labeled defects with no normals made into defects
_SOURCE_KEYS = ("source", "source_image", "source_path", "normal", "normal_path")
# the model input: (H, W), an int for a square, or None for images at their native size (tiles)
Size = tuple[int, int] | int | None


def _hw(size: Size) -> tuple[int, int] | None:
    return (size, size) if isinstance(size, (int, np.integer)) else (None if size is None else tuple(size))


def _fit(image: np.ndarray, size: Size, channels: int) -> np.ndarray:
    """A stored image as the detectors take it: uint8 with `channels`, at `size` (None: its own size)."""
    h, w = _hw(size) or image.shape[:2]
    return fit_uint8(image, h, w, channels)


def _fit_mask(mask: np.ndarray, size: Size) -> np.ndarray:
    return fit_mask(mask, *_hw(size)) if size is not None else np.asarray(mask, bool)


def _scaled_box(b, h: int, w: int, size: tuple[int, int]) -> list[float]:
    """A Box on an h x w image as [x, y, w, h] on the image of `size` (H, W) the detectors see."""
    fx, fy = size[1] / w, size[0] / h
    return [b.x0 * fx, b.y0 * fy, (b.x1 - b.x0) * fx, (b.y1 - b.y0) * fy]


def _boxes_of(s: Sample, mask: np.ndarray | None) -> list[dict[str, Any]]:
    """Ground-truth boxes in the image's own pixels: a mask file's connected components (one box per defect
    region), else the layout's own boxes (VOC, COCO)."""
    default = s.class_name if s.class_name not in (None, "good") else "defect"
    if s.mask_path is not None and mask is not None:
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        return [{"bbox": [float(v) for v in stats[i, :4]], "class": default} for i in range(1, n)]
    return [{"bbox": _scaled_box(b, s.height, s.width, (s.height, s.width)), "class": b.label or default}
            for b in s.boxes]


def _class_or_defect(s: Sample) -> str:
    return s.class_name if s.class_name not in (None, "good") else "defect"


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


def _subset(n: int, limit: int | None, seed: int) -> list[int]:
    if limit is None or limit >= n:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, size=limit, replace=False).tolist())


def read_normals(train: Path, max_train: int | None, seed: int, progress: bool) -> list[Sample]:
    """The normal training images as read (a random subset of `max_train`)."""
    ds = open_dataset(train)
    ds = ds.select(split="train", normal=True) if ds.format == "mvtec" else ds.select(normal=True)
    if len(ds) == 0:
        raise DefectgenError(train, "no normal images found to train on (expected train/good/ or a folder of "
                             "normal images)")
    ds.entries = [ds.entries[i] for i in _subset(len(ds), max_train, seed)]
    return ds.read_all("normals", progress)


def load_test(test: Path, resolution: Resolution | str | int | None, channels: int, max_test: int | None, seed: int,
              progress: bool) -> dict[str, Any]:
    """The real test set: model inputs ("images") at `size`, the model input (H, W) that `resolution` gives the
    set's most common image size (None: native size, for tiles), and at each image's own size the "originals"
    (uint8 with `channels`), bool "masks" (all-False for normals), ground-truth "boxes" and "sizes"; labels,
    class names, paths."""
    ds = open_dataset(test)
    if ds.format == "mvtec" or "test" in ds.splits:  # an MVTec root, or a VOC root with train/ and test/
        ds = ds.select(split="test")
    if len(ds) == 0:
        raise DefectgenError(test, "no test images found (expected test/<class>/ in MVTec layout, or COCO)")
    ds.entries = [ds.entries[i] for i in _subset(len(ds), max_test, seed)]
    samples = ds.read_all("test set", progress)
    normal = [s.is_normal for s in samples]
    if all(normal):
        raise DefectgenError(test, "the test set has no defect images: nothing to detect")
    for s in samples:
        if not s.is_normal and s.mask is None and not s.boxes:
            raise DefectgenError(test, f"defect image {s.path.name if s.path else '?'} has no mask; pixel metrics "
                                 "need ground-truth masks (ground_truth/<class>/<stem>_mask.png, COCO masks or "
                                 "VOC boxes)")
    sizes = [(s.height, s.width) for s in samples]
    size = None if resolution is None else parse_resolution(resolution).for_sizes(sizes)
    masks = [s.defect_mask() if not n else np.zeros(hw, bool) for s, n, hw in zip(samples, normal, sizes,
                                                                                  strict=True)]
    boxes = [[] if n else _boxes_of(s, m) for s, m, n in zip(samples, masks, normal, strict=True)]
    box_classes = sorted({b["class"] for bs in boxes for b in bs})
    if not any(normal) and len(box_classes) < 2:
        raise DefectgenError(test, "the test set has no normal images: image AUROC needs both kinds")
    originals = [_fit(s.image, None, channels) for s in samples]
    return {
        "images": originals if size is None else np.stack([_fit(s.image, size, channels) for s in samples]),
        "size": size,
        "originals": originals,
        "sizes": sizes,
        "masks": masks,
        "labels": np.array([not n for n in normal]),
        "classes": ["good" if n else (s.class_name or "defect") for s, n in zip(samples, normal, strict=True)],
        "paths": [s.path for s in samples],
        "boxes": boxes,
        "box_classes": box_classes,  # two or more: a multi-class detection test, scored with COCO mAP too
    }


def load_labeled(labeled: Path, size: Size, channels: int, test_classes: Sequence[str], progress: bool
                 ) -> dict[str, Any]:
    """Real labeled defects (any layout; an MVTec root gives its labeled/ split, a VOC root its train/ split):
    images, masks and class label maps at `size` ((H, W), a square's side, or None: their own), the class names,
    and the samples as read (for copypaste)."""
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
    return {"images": stack_or_list([_fit(s.image, size, channels) for s in samples]),
            "masks": stack_or_list(masks), "labels": stack_or_list(label_maps), "class_names": names,
            "boxes": boxes, "samples": samples}


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


def load_synthetic(synthetic: Path | Sequence[Path], size: Size, channels: int, normals: Sequence[np.ndarray],
                   progress: bool, labeled: dict[str, Any] | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int], np.ndarray, list[str]]:
    """Synthetic defect images, masks and their clean normals at `size` ((H, W), a square's side, or None:
    their own), how the cleans were found, and the class label maps with their class names (see `_label_map`);
    arrays, or lists where images of several sizes stay at their own. Several sets (one per class, say) pool.

    labeled: the real labeled defects as `load_labeled` gives them. A synthetic image painted on one of them (a
    dataset without normal images, such as NEU-DET, paints on its labeled defects) keeps that image's own labeled
    defects in its mask and label map: they are in the picture, and training on them as background would teach a
    lie. Its clean image is the labeled image already in memory."""
    folders = [Path(synthetic)] if isinstance(synthetic, (str, Path)) else [Path(f) for f in synthetic]
    samples, declared = [], {}
    for folder in folders:
        got = [s for s in open_dataset(folder).read_all("synthetic set", progress)
               if s.mask is not None and s.mask.any()]
        if not got:
            raise DefectgenError(folder, "the synthetic set has no defect masks (expected annotations.json with "
                                 "segmentations, or images with <stem>_mask.png)")
        samples += got
        declared.update(_declared_sources(folder))
    normals_small = np.stack([cv2.resize(n.astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA)
                              .reshape(32, 32, -1) for n in normals]) if len(normals) else None
    images, masks, cleans, how = [], [], [], {"declared": 0, "matched": 0, "inpainted": 0, "on_labeled_canvas": 0}
    labels, names = [], []
    canvas_index = {s.path.resolve(): i for i, s in enumerate(labeled["samples"]) if s.path is not None} \
        if labeled else {}
    for s in samples:
        img, m = _fit(s.image, size, channels), _fit_mask(s.mask, size)
        lab = _label_map(s, m, names)
        src = declared.get(s.path.resolve()) if s.path is not None else None
        canvas = canvas_index.get(src) if src is not None else None
        if canvas is not None:  # the canvas's own defects, under the painted one
            under = _relabel(labeled["labels"][canvas], labeled["class_names"], names)
            lab = np.where(m, lab, under)
            m = m | (under > 0)
            how["on_labeled_canvas"] += 1
        labels.append(lab)
        if canvas is not None:
            clean, kind = labeled["images"][canvas], "declared"
        elif src is not None:
            clean, kind = _fit(read_image(src), size, channels), "declared"
        elif normals_small is not None:
            clean, kind = _clean_of(img, m, normals_small, normals)
        else:
            clean, kind = _inpainted(img, m), "inpainted"
        how[kind] += 1
        images.append(img)
        masks.append(m)
        cleans.append(clean)
    return (stack_or_list(images), stack_or_list(masks), stack_or_list(cleans), how, stack_or_list(labels),
            names)


def _relabel(label_map: np.ndarray, from_names: Sequence[str], names: list[str]) -> np.ndarray:
    """A label map indexed by `from_names`, re-indexed by `names` (extended with the classes it holds)."""
    remap = np.zeros(len(from_names) + 1, np.uint8)
    for k in np.unique(label_map[label_map > 0]):
        name = from_names[k - 1]
        if name not in names:
            names.append(name)
        remap[k] = names.index(name) + 1
    return remap[label_map]


def draem_set(normals: Sequence[np.ndarray], n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n DRAEM-style defects on randomly chosen normals (of any sizes) with Perlin masks (textures: the
    normals): images, masks and cleans as arrays, or lists when the normals differ in size."""
    from defectgen.masks import MaskGenerator
    from defectgen.synth.draem import DraemGenerator

    rng = np.random.default_rng([seed, 7])
    pick = rng.integers(len(normals), size=n)
    masks = [MaskGenerator("perlin", seed=seed)(i, *normals[k].shape[:2])[0] for i, k in enumerate(pick)]
    gen = DraemGenerator(textures=list(normals))
    floats = [normals[i].astype(np.float32) / 255.0 for i in pick]
    out = gen.generate(floats, masks, [int(seed) * 100003 + i for i in range(n)], [None] * n)
    return (stack_or_list([from_float(o, np.uint8) for o in out]), stack_or_list(masks),
            stack_or_list([normals[i] for i in pick]))


def _labels_from_classes(masks: Sequence[np.ndarray], per_image: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    names = sorted(set(per_image))
    return stack_or_list([np.asarray(m, np.uint8) * (names.index(c) + 1) for m, c in zip(masks, per_image,
                                                                                         strict=True)]), names


def _join(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    return stack_or_list([*a, *b])


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two training sets in one: classes merged by name, label maps re-indexed."""
    names = list(a["class_names"]) + [c for c in b["class_names"] if c not in a["class_names"]]
    remap = np.arange(256, dtype=np.uint8)  # IGNORE (255) stays left out
    remap[:len(b["class_names"]) + 1] = [0] + [names.index(c) + 1 for c in b["class_names"]]
    cleans = None if a["cleans"] is None or b["cleans"] is None else _join(a["cleans"], b["cleans"])
    boxes = None
    if a.get("boxes") is not None or b.get("boxes") is not None:
        boxes = [*(a.get("boxes") or [None] * len(a["images"])), *(b.get("boxes") or [None] * len(b["images"]))]
    return {"images": _join(a["images"], b["images"]), "masks": _join(a["masks"], b["masks"]),
            "cleans": cleans, "labels": _join(a["labels"], [remap[x] for x in b["labels"]]), "class_names": names,
            "synthetic_images": a["synthetic_images"] + b["synthetic_images"],
            "real_images": a["real_images"] + b["real_images"], "boxes": boxes}


def _training_set(images=None, masks=None, cleans=None, labels=None, class_names=(), synthetic_images=0,
                  real_images=0, boxes=None) -> dict[str, Any]:
    """boxes: per image its layout's boxes ({"bbox": [x, y, w, h], "class"}) or None (its mask's regions serve),
    or None for the whole set."""
    return {"images": images, "masks": masks, "cleans": cleans, "labels": labels, "class_names": list(class_names),
            "synthetic_images": synthetic_images, "real_images": real_images, "boxes": boxes}


def _copypaste(normals: np.ndarray, labeled: dict[str, Any], n: int, seed: int) -> dict[str, Any]:
    from defectgen.synth.copypaste import copypaste_set  # synth sits beside detect: imported when the run needs it
    images, masks, cleans, per_image = copypaste_set(normals, labeled["samples"], n, seed)
    labels, names = _labels_from_classes(masks, per_image)
    return _training_set(images, masks, cleans, labels, names, synthetic_images=len(images))


def _per_class(test: dict[str, Any], maps: Sequence[np.ndarray], scores: np.ndarray) -> dict[str, dict[str, float]]:
    classes = sorted({c for c, lab in zip(test["classes"], test["labels"], strict=True) if lab})
    good = ~test["labels"]
    result = {}
    for c in classes:
        keep = np.flatnonzero(good | np.array([x == c for x in test["classes"]]))
        result[c] = evaluate(test["labels"][keep], scores[keep], [test["masks"][i] for i in keep],
                             [maps[i] for i in keep])
    return result


def _check_choices(detector: str, det_cls, train, synthetic, baselines: Sequence[str], real_labeled
                   ) -> tuple[list[str], dict[str, str]]:
    """The runs to make (baselines without repeats or runs the detector cannot learn from) and the skipped
    ones with why; a choice that cannot work is refused here, before any input is read."""
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise DefectgenError(None, f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(BASELINES)}")
    baselines = list(dict.fromkeys(baselines))
    skipped: dict[str, str] = {}
    if det_cls.supervised and "none" in baselines:
        baselines.remove("none")
        skipped["none"] = f"{detector} is supervised: without defects it has nothing to learn from"
    wrong = [b for b in baselines if b in SUPERVISED_ONLY and not det_cls.supervised]
    if wrong:
        supervised = ", ".join(n for n in detector_names() if get_detector(n).supervised)
        raise DefectgenError(None, f"baseline(s) {', '.join(wrong)} train on labeled defects alone, which only a "
                             f"supervised detector can use ({supervised}); {detector} cannot")
    if synthetic is None and not baselines:
        raise DefectgenError(None, "nothing to run: give `synthetic` or at least one baseline"
                             + (f" ({skipped['none']})" if skipped else ""))
    need = [b for b in baselines if b in NEEDS_LABELED]
    if need and real_labeled is None:
        raise DefectgenError(None, f"baseline(s) {', '.join(need)} need `real_labeled`: a folder of real labeled "
                             "defects with masks or boxes")
    if "real+synthetic" in baselines and synthetic is None:
        raise DefectgenError(None, "baseline real+synthetic needs `synthetic`")
    if train is None:
        if not det_cls.supervised:
            raise DefectgenError(None, f"{detector} learns what normal looks like: it needs normal training "
                                 "images (`train`)")
        no_normals = [b for b in baselines if b in ("draem", "copypaste")]
        if no_normals:
            raise DefectgenError(None, f"baseline(s) {', '.join(no_normals)} paint defects on normal images: "
                                 "give `train` normals, or leave them out")
    return baselines, skipped


def _load_inputs(train: Path | None, test: Path, synthetic: list[Path] | None, real_labeled: Path | None,
                 resolution: Resolution | None, max_train: int | None, max_test: int | None, seed: int,
                 progress: bool, uses_labeled: bool, semi: Path | None = None) -> dict[str, Any]:
    """Normals, test set, labeled defects and the synthetic set as training set (`_training_set`), all at the
    model input `resolution` gives the test set (None: at their own size, for tiles): normals, channels,
    test_set, labeled (None without --real-labeled), synthetic (None without --synthetic) and clean_sources (how
    the synthetic set's clean normals were found), unlabeled (the `semi` images, or None)."""
    normal_samples = read_normals(train, max_train, seed, progress) if train is not None else []
    # gray only when every normal is gray; without normals the defect images train, on 3 channels
    channels = 1 if normal_samples and all(s.channels == 1 for s in normal_samples) else 3
    test_set = load_test(test, resolution, channels, max_test, seed, progress)
    size = test_set["size"]
    normals = stack_or_list([_fit(s.image, size, channels) for s in normal_samples])
    if not normal_samples:
        normals = np.zeros((0, *(size or (32, 32)), 3), np.uint8)
    del normal_samples
    test_classes = sorted({c for c in test_set["classes"] if c != "good"} | set(test_set["box_classes"]))
    labeled = None
    if real_labeled is not None:  # checked even when no run uses it: a bad input is reported, not ignored
        labeled = load_labeled(real_labeled, size, channels, test_classes, progress)
        if not uses_labeled:
            warn(f"no run uses `real_labeled` (baselines {', '.join(NEEDS_LABELED)} do)")
    inputs = {"normals": normals, "channels": channels, "test_set": test_set, "labeled": labeled,
              "synthetic": None, "clean_sources": None,
              "unlabeled": load_unlabeled(semi, size, channels, progress) if semi is not None else None}
    if synthetic is not None:
        images, masks, cleans, clean_sources, labels, names = load_synthetic(synthetic, size, channels, normals,
                                                                              progress, labeled)
        inputs["synthetic"] = _training_set(images, masks, cleans, labels, names, synthetic_images=len(images))
        inputs["clean_sources"] = clean_sources
    return inputs


def _training_sets(baselines: Sequence[str], inputs: dict[str, Any], n_draem: int | None, seed: int
                   ) -> tuple[dict[str, dict[str, Any]], int]:
    """Each run's training set by run name (the synthetic set first, then the baselines in the order given),
    and how many defects the draem and copypaste baselines make."""
    normals, labeled, synthetic = inputs["normals"], inputs["labeled"], inputs["synthetic"]
    runs_data: dict[str, dict[str, Any]] = {} if synthetic is None else {"synthetic": synthetic}
    n_syn = n_draem or (len(synthetic["images"]) if synthetic is not None else 100)
    real = None if labeled is None else _training_set(labeled["images"], labeled["masks"], None, labeled["labels"],
                                                      labeled["class_names"], real_images=len(labeled["images"]),
                                                      boxes=labeled["boxes"])
    for b in baselines:
        if b == "none":
            runs_data[b] = _training_set()
        elif b == "draem":
            images, masks, cleans = draem_set(normals, n_syn, seed)
            labels, names = _labels_from_classes(masks, ["defect"] * len(masks))
            runs_data[b] = _training_set(images, masks, cleans, labels, names, synthetic_images=len(images))
        elif b == "copypaste":
            runs_data[b] = _copypaste(normals, labeled, n_syn, seed)
            runs_data[b]["real_images"] = len(labeled["images"])
        elif b == "real":
            runs_data[b] = real
        else:
            runs_data[b] = _merge(synthetic, real)
    return runs_data, n_syn


def _train_and_score(name: str, data: dict[str, Any], det_cls, detector: str, bb, options: DetectorOptions,
                     normals: np.ndarray, test_set: dict[str, Any], boxes_too: bool, progress: bool,
                     tile: int | None = None):
    """Train one run's detector on `data` (on tiles of `tile` at native scale if given) and score it on the test
    set: (the model, the run's record for the report, maps at each test image's own size, scores)."""
    t0 = time.perf_counter()
    model = det_cls.from_options(bb, options)
    if tile is not None:
        model = Tiled(model, tile, options.seed)
    boxes = {"boxes": data["boxes"]} if det_cls.box_detector and data.get("boxes") is not None else {}
    model.fit(normals, data["images"], data["masks"], progress=progress, cleans=data["cleans"],
              labels=data["labels"], class_names=data["class_names"], desc=f"[{name}] {detector}", **boxes)
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    run: dict[str, Any] = {}
    sizes = test_set["sizes"]
    maps, scores, found = _predict(model, test_set["images"], boxes_too, progress, f"[{name}] {detector}: scoring")
    if boxes_too:
        run["coco"] = coco_map(test_set["boxes"], rescale_boxes(found, test_set["size"], sizes),
                               test_set["box_classes"])
    maps = restore_maps(maps, sizes)  # pixel metrics on the original masks, not squashed ones
    metrics = evaluate(test_set["labels"], scores, test_set["masks"], maps)
    per_class = _per_class(test_set, maps, scores)
    record = {"metrics": metrics, "per_class": per_class, "train_s": train_s, "test_s": time.perf_counter() - t1,
              "synthetic_images": int(data["synthetic_images"]), "real_images": int(data["real_images"]), **run,
              **model.summary()}
    if progress:
        print(f"[{name}] " + ", ".join(f"{k} {fmt_metric(v)}" for k, v in metrics.items())
              + (f", map50 {fmt_metric(run['coco']['map50'])}" if "coco" in run else ""), flush=True)
    return model, record, maps, scores


def _predict(model, images, boxes_too: bool, progress: bool, desc: str, chunk: int = 64
             ) -> tuple[list[np.ndarray], np.ndarray, list[list[dict]]]:
    """The model's maps, scores (and boxes) of the test images, `chunk` images at a time under a progress bar
    (a detector scores each image on its own, so chunks change nothing)."""
    maps: list[np.ndarray] = []
    scores, found = [], []
    with bar(total=len(images), desc=desc, unit="img", disable=not progress) as shown:
        for start in range(0, len(images), chunk):
            part = images[start: start + chunk]
            if boxes_too:
                m, sc, f = model.predict_with_boxes(part)
                found += f
            else:
                m, sc = model.predict(part)
            maps += list(m)
            scores.append(np.asarray(sc))
            shown.update(len(part))
    return maps, np.concatenate(scores), found


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def plan_runs(run_names: Sequence[str], det_cls, steps: int, pseudo_twins: bool) -> list[tuple[str, int | None]]:
    """The runs validate will make, in order, with the steps each trains for (None: no steps, ExDD): what
    `JobEstimate` estimates. With unlabeled images every run has a `+pseudo` twin right after it."""
    per_run = int(steps) if "steps" in det_cls.options else None
    out = []
    for name in run_names:
        out.append((name, per_run))
        if pseudo_twins:
            out.append((f"{name}+pseudo", per_run))
    return out


def _run_config(detector: str, det_cls, train: Path | None, synthetic: list[Path] | None, real_labeled,
                test: Path, baselines: Sequence[str], n_syn: int, dev, settings: dict[str, Any]) -> dict[str, Any]:
    """report.json's config: what was run. settings: run_validation's arguments recorded as given, except the
    options the detector does not use (steps, epochs, patience, coreset_ratio, positive_quantile), recorded as
    None."""
    uses = set(det_cls.options)
    s = settings
    return {
        "detector": detector, "train": str(train) if train else None,
        "synthetic": (str(synthetic[0]) if len(synthetic) == 1 else [str(p) for p in synthetic]) if synthetic
        else None,
        "real_labeled": str(real_labeled) if real_labeled else None,
        "test": str(test), "baselines": list(baselines), "backbone": s["backbone"],
        "backbone_pretrained": is_pretrained(s["backbone"]), "feature_timesteps": s.get("feature_timesteps"),
        "feature_dim": s.get("feature_dim"), "resolution": s["resolution"], "tile": s["tile"],
        "seed": s["seed"], "steps": s["steps"] if "steps" in uses else None,
        "epochs": s["epochs"] if "epochs" in uses else None, "patience": s["patience"] if "patience" in uses else None,
        "student_width": s["student_width"],
        "batch_size": s["batch_size"], "lr": s["lr"],
        "coreset_ratio": s["coreset_ratio"] if "coreset_ratio" in uses else None,
        "positive_quantile": s["positive_quantile"] if "positive_quantile" in uses else None,
        "n_draem": n_syn if "draem" in baselines else None, "n_copypaste": n_syn if "copypaste" in baselines
        else None, "max_train": s["max_train"], "max_test": s["max_test"], "semi": s.get("semi"),
        "semi_rule": s.get("semi_rule"), "device": str(dev),
    }


def _data_summary(inputs: dict[str, Any], boxes_too: bool) -> dict[str, Any]:
    """report.json's train and test sections (and synthetic_clean_sources where there is a synthetic set)."""
    test_set, labeled = inputs["test_set"], inputs["labeled"]
    out: dict[str, Any] = {"train": {"normals": int(len(inputs["normals"])), "channels": inputs["channels"]}}
    if labeled is not None:
        out["train"]["labeled_defects"] = int(len(labeled["images"]))
        out["train"]["labeled_classes"] = labeled["class_names"]
    out["test"] = {"images": int(len(test_set["labels"])), "normal": int((~test_set["labels"]).sum()),
                   "defect": int(test_set["labels"].sum()),
                   "classes": {c: test_set["classes"].count(c) for c in sorted(set(test_set["classes"]))}}
    if boxes_too:
        out["test"]["boxes"] = {c: sum(b["class"] == c for bs in test_set["boxes"] for b in bs)
                                for c in test_set["box_classes"]}
    if inputs["clean_sources"] is not None:
        out["synthetic_clean_sources"] = inputs["clean_sources"]
    return out


def run_validation(
    detector: str, train: str | Path | None, test: str | Path, out: str | Path,
    synthetic: str | Path | Sequence[str | Path] | None = None,
    baselines: Sequence[str] = DEFAULT_BASELINES, backbone: str | None = None,
    resolution: int | str | Resolution = 256, seed: int = 0, steps: int = 1000, batch_size: int = 8,
    lr: float = 1e-3, coreset_ratio: float = 0.1, n_draem: int | None = None, max_train: int | None = None,
    max_test: int | None = None, n_overlays: int = 8, epochs: int = 50, patience: int = 5,
    device: str | None = None, overwrite: bool = False, progress: bool = True, save_models: bool = False,
    student_width: int | None = None, positive_quantile: float | None = None,
    real_labeled: str | Path | None = None, tile: int | None = None,
    feature_timesteps: Sequence[int] | None = None, feature_dim: int | None = None,
    semi: str | Path | None = None, semi_rule: PseudoLabelRule | None = None, box_head: str = "fcos"
) -> dict[str, Any]:
    """Train `detector` once per run (synthetic set, then each baseline), score each on the real test set,
    write the report to `out`, and return the results dict (also written as report.json).

    train: the normal images; None for a supervised detector on a dataset without normals (NEU-DET), which then
    learns from defect images alone. synthetic: one set, or several pooled (one folder per class, say).

    resolution: the model input, `HxW` or the short side with the aspect kept (`parse_resolution`); one input
    size serves the whole run, the one the test set's most common image size gives, and every set is resized
    to it. Anomaly maps are resized back to each test image's own size and pixel metrics use the original
    masks; report.json records the input used as [H, W]. tile: instead, images stay at native scale and the
    detector works on overlapping `tile` x `tile` windows (`Tiled`); `resolution` is then not used.

    real_labeled: real labeled defects (any layout `open_dataset` reads; an MVTec root gives its labeled/
    split), needed by the copypaste, real and real+synthetic baselines. n_draem: how many defects the draem and
    copypaste baselines make (default: as many as the synthetic set has, else 100). backbone: see
    `resolve_backbone` (None: the pretrained default); a DDPM run folder gives diffusion features, noised to
    `feature_timesteps` and PCA-projected to `feature_dim` channels a level (`DiffusionBackbone`).

    semi: a folder of unlabeled images (any layout; its labels, if any, are not read): each run gets a
    `RUN+pseudo` twin trained with the pseudo-labels its teacher gives them under `semi_rule`
    (`defectgen.detect.semi`; seg only). box_head: det's torchvision model (`detect.det.BOX_HEADS`)."""
    from defectgen.detect.det import BOX_HEADS

    start = time.perf_counter()
    det_cls = get_detector(detector)
    if box_head not in BOX_HEADS:
        raise DefectgenError(None, f"unknown box head {box_head!r}: choose one of {', '.join(BOX_HEADS)}")
    resolution, tile = parse_resolution(resolution), check_tile(tile)
    baselines, skipped = _check_choices(detector, det_cls, train, synthetic, baselines, real_labeled)
    if semi is not None:
        _check_semi(detector, det_cls, tile)
        semi, semi_rule = Path(semi), semi_rule or PseudoLabelRule()
    train, test, out = Path(train) if train is not None else None, Path(test), Path(out)
    if synthetic is not None:
        synthetic = ([Path(synthetic)] if isinstance(synthetic, (str, Path)) else [Path(p) for p in synthetic])
    real_labeled = Path(real_labeled) if real_labeled is not None else None
    torch.manual_seed(seed)
    dev = pick_device(device)
    backbone = resolve_backbone(backbone)  # loaded before anything is read or written: offline, the error comes first
    bb = load_backbone(backbone, dev, feature_timesteps, feature_dim)
    # every input is read and every baseline made before the output folder is touched
    inputs = _load_inputs(train, test, synthetic, real_labeled, None if tile else resolution, max_train, max_test,
                          seed, progress, uses_labeled=any(b in NEEDS_LABELED for b in baselines), semi=semi)
    test_set = inputs["test_set"]
    boxes_too = det_cls.produces_boxes and (len(test_set["box_classes"]) >= 2 or det_cls.box_detector)
    if det_cls.box_detector and not any(test_set["boxes"]):
        raise DefectgenError(test, f"{detector} is scored by box mAP and the test set has no defect boxes (VOC or "
                             "COCO boxes, or masks whose regions give them)")
    if tile and boxes_too:
        raise DefectgenError(None, "`tile` does not produce boxes yet, and this multi-class test set is scored "
                             "by box mAP: leave out `tile`")
    runs_data, n_syn = _training_sets(baselines, inputs, n_draem, seed)
    for note in skipped.values():
        print(f"note: {note}; the none baseline is skipped", file=sys.stderr, flush=True)
    folder = OutputFolder(out, overwrite=overwrite, resumable=False, verb="validate",
                          protect=[train, test, *(synthetic or []), *backbone.split(SEPARATOR), real_labeled, semi])
    if not is_pretrained(backbone):  # said once the inputs are known good, so a bad input stays one line
        warn(TINY_WARNING)
    out = folder.prepare()
    try:
        size = test_set["size"] or (tile, tile)
        options = DetectorOptions(seed=seed, sigma=4.0 * min(size) / 256, steps=steps, batch_size=batch_size, lr=lr,
                                  coreset_ratio=coreset_ratio, positive_quantile=positive_quantile, width=student_width,
                                  epochs=epochs, patience=patience, box_head=box_head)
        results = _run_all(out, detector, det_cls, bb, options, inputs, runs_data,
                           boxes_too, tile, n_overlays, save_models, progress, semi_rule)
        settings = {"backbone": backbone, "resolution": list(size), "tile": tile, "seed": seed, "steps": steps,
                    "epochs": epochs, "patience": patience, "box_head": box_head if detector == "det" else None,
                    "student_width": student_width, "batch_size": batch_size, "lr": lr, "coreset_ratio": coreset_ratio,
                    "positive_quantile": positive_quantile, "max_train": max_train, "max_test": max_test,
                    "semi": str(semi) if semi is not None else None,
                    "semi_rule": asdict(semi_rule) if semi is not None else None,
                    **(bb.options() if hasattr(bb, "options") else {})}
        results["config"] = _run_config(detector, det_cls, train, synthetic, real_labeled, test, baselines, n_syn,
                                        dev, settings)
        if skipped:
            results["skipped"] = skipped
        results.update(_data_summary(inputs, boxes_too))
        results["hardware"] = hardware(dev)
        results["wall_time_s"] = time.perf_counter() - start
        results["runs"] = json_safe(results["runs"])
        write_validation_report(out, results)
        return results
    except BaseException:
        folder.abandon()  # a report is written whole or not at all: no half report folder stays behind
        raise


def _run_all(out: Path, detector: str, det_cls, bb, options: DetectorOptions, inputs: dict[str, Any],
             runs_data: dict[str, dict[str, Any]], boxes_too: bool, tile: int | None, n_overlays: int,
             save_models: bool, progress: bool, semi_rule: PseudoLabelRule | None = None) -> dict[str, Any]:
    """Train and score every run (and its `+pseudo` twin when there are unlabeled images), write roc.png and the
    overlays; {"runs": records, "files": names}."""
    test_set = inputs["test_set"]
    show = overlay_picks(test_set, n_overlays, np.random.default_rng(options.seed))
    results: dict[str, Any] = {"runs": {}}
    curves: dict[str, dict[str, Any]] = {}
    overlay_maps: dict[str, tuple[list[np.ndarray], float, float]] = {}
    queue = list(runs_data.items())
    # the whole job's time: said after the first steps of the first run, and again as each run starts
    job = JobEstimate(plan_runs(runs_data, det_cls, options.steps, inputs["unlabeled"] is not None),
                      getattr(getattr(bb, "mean", None), "device", None), above_bars(_say) if progress else None,
                      what="validate")
    with job.current_job():
        while queue:
            name, data = queue.pop(0)
            job.start(name)
            model, results["runs"][name], maps, scores = _train_and_score(
                name, data, det_cls, detector, bb, options, inputs["normals"], test_set, boxes_too, progress, tile)
            if "pseudo" in data:
                results["runs"][name]["pseudo"] = data["pseudo"]
            elif inputs["unlabeled"] is not None:
                twin = _with_pseudo_labels(name, model, data, inputs, bb, semi_rule, options.seed, progress)
                if twin is not None:
                    queue.insert(0, (f"{name}+pseudo", twin))
                else:
                    job.drop(f"{name}+pseudo")
            job.finish()
            _keep_run(name, results, curves, overlay_maps, maps, scores, show, model, out, detector, save_models)
            del maps, model
    write_roc(out / "roc.png", test_set, curves)
    curves.clear()
    overlay_files = write_overlays(out / "overlays", test_set, show, overlay_maps)
    results["files"] = {"json": "report.json", "markdown": "report.md", "roc": "roc.png", "overlays": overlay_files}
    return results


def _keep_run(name: str, results: dict[str, Any], curves: dict, overlay_maps: dict, maps, scores, show, model,
              out: Path, detector: str, save_models: bool) -> None:
    """What the report keeps of a finished run: its curve, its overlays' maps and colour scale, its model."""
    curves[name] = {"scores": scores, "maps": maps, "metrics": results["runs"][name]["metrics"]}
    every = np.concatenate([m.ravel() for m in maps])  # the colour scale spans all test images
    overlay_maps[name] = ([maps[i] for i in show], float(np.percentile(every, 1)), float(np.percentile(every, 99.9)))
    if save_models:
        model.save(out / f"{detector}_{name}.safetensors")


def _check_semi(detector: str, det_cls, tile: int | None) -> None:
    if not hasattr(det_cls, "teacher"):
        raise DefectgenError(None, f"`semi` pseudo-labels with a supervised detector's mean teacher (seg); "
                             f"{detector} has none")
    if tile:
        raise DefectgenError(None, "`semi` does not work on tiles yet: leave out `tile`")


def load_unlabeled(folder: Path, size: Size, channels: int, progress: bool) -> np.ndarray:
    """Every image under `folder` (any layout; labels are not read) at the model input `size`."""
    samples = open_dataset(folder).read_all("unlabeled images", progress)
    return np.stack([_fit(s.image, size, channels) for s in samples])


def _with_pseudo_labels(name: str, model, data: dict[str, Any], inputs: dict[str, Any], bb, rule: PseudoLabelRule,
                        seed: int, progress: bool) -> dict[str, Any] | None:
    """Run `name`'s training set plus the pseudo-labels its trained model's teacher gives the unlabeled images
    (None, with a warning, when no label passes), with the counts under "pseudo"."""
    reference = DefectReference(bb, data["images"], data["masks"], inputs["normals"], seed=seed) \
        if rule.feature_share > 0 else None
    pseudo, counts = pseudo_label(model.teacher(), inputs["unlabeled"], rule, reference, progress=progress)
    if progress:
        print(f"[{name}] pseudo-labels: kept {counts['kept']} of {counts['regions']} regions on "
              f"{counts['images_used']} of {counts['unlabeled_images']} images", flush=True)
    if pseudo["images"] is None:
        warn(f"run {name}: no pseudo-label passed the checks (`semi_threshold`, `semi_feature_share`); "
             f"{name}+pseudo is not run")
        return None
    merged = _merge(data, _training_set(pseudo["images"], pseudo["masks"], None, pseudo["labels"],
                                        pseudo["class_names"]))
    merged["pseudo"] = counts
    return merged
