"""`defectgen validate`: train a detector with a synthetic set and with each baseline in one run, score all on
the real test set, and write report.json, report.md, roc.png and anomaly-map overlays.

Runs: `synthetic` (the normals plus the given synthetic set) and the baselines: `none` (normals only; for the
unsupervised detectors), `draem` (the classic DRAEM-style generator applied in memory to as many normals as the
synthetic set has images, Perlin masks), `copypaste` (real labeled defects pasted onto as many normals),
and for supervised detectors (seg) `real` (the labeled defects alone) and `real+synthetic` (labeled defects plus
the synthetic set: how a user would really use a generated set). Where the test set has boxes or masks of
several classes and the detector outputs boxes, COCO box mAP is measured too.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from defectgen.detect.backbone import load_backbone
from defectgen.detect.base import DetectorOptions, detector_names, get_detector
from defectgen.errors import DefectgenError
from defectgen.io.datasets import open_dataset
from defectgen.io.images import from_float, to_float
from defectgen.io.output import OutputFolder, atomic_write_bytes, atomic_write_json, atomic_write_text
from defectgen.io.sample import Sample
from defectgen.metrics import coco_map, evaluate, roc_curve
from defectgen.runtime import hardware, pick_device

BASELINES = ("none", "draem", "copypaste", "real", "real+synthetic")
DEFAULT_BASELINES = ("none", "draem")
NEEDS_LABELED = ("copypaste", "real", "real+synthetic")
SUPERVISED_ONLY = ("real", "real+synthetic")  # labeled defects with no normals made into defects
METRICS = ("image_auroc", "pixel_auroc", "aupro", "pixel_ap", "image_f1_max", "pixel_f1_max")
_SOURCE_KEYS = ("source", "source_image", "source_path", "normal", "normal_path")


def _resize_image(image: np.ndarray, size: int, channels: int) -> np.ndarray:
    """Any stored image -> size x size x channels uint8 (detectors work in 8 bits)."""
    img = to_float(image)
    interp = cv2.INTER_AREA if max(img.shape[:2]) > size else cv2.INTER_LINEAR
    img = cv2.resize(img, (size, size), interpolation=interp).reshape(size, size, -1)
    if img.shape[2] != channels:
        img = np.repeat(img, 3, axis=2) if channels == 3 else img.mean(axis=2, keepdims=True)
    return from_float(img, np.uint8)


def _resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Area-resampled and cut at one half; a defect smaller than a pixel keeps its strongest pixel."""
    m = cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    out = m >= 0.5
    if mask.any() and not out.any():
        out = m >= m.max()
    return out


def _scaled_box(b, h: int, w: int, size: int) -> list[float]:
    """A Box on an h x w image as [x, y, w, h] on the size x size image the detectors see."""
    fx, fy = size / w, size / h
    return [b.x0 * fx, b.y0 * fy, (b.x1 - b.x0) * fx, (b.y1 - b.y0) * fy]


def _boxes_of(s: Sample, mask: np.ndarray | None, size: int) -> list[dict[str, Any]]:
    """Ground-truth boxes at `size`: a mask file's connected components (one box per defect region), else the
    layout's own boxes (VOC, COCO)."""
    default = s.class_name if s.class_name not in (None, "good") else "defect"
    if s.mask_path is not None and mask is not None:
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        return [{"bbox": [float(v) for v in stats[i, :4]], "class": default} for i in range(1, n)]
    return [{"bbox": _scaled_box(b, s.height, s.width, size), "class": b.label or default} for b in s.boxes]


def _label_map(s: Sample, mask: np.ndarray, size: int, names: list[str]) -> np.ndarray:
    """size x size ints: 0 outside `mask`, 1 + index into `names` (extended as classes appear) inside; a
    multi-class image's pixels take the class of the smallest box holding them, the rest the image's class."""
    def index(name: str | None) -> int:
        name = name if name not in (None, "good") else "defect"
        if name not in names:
            names.append(name)
        return names.index(name) + 1

    out = np.zeros((size, size), np.uint8)
    labels = {b.label for b in s.boxes if b.label}
    if len(labels) > 1:
        for b in sorted(s.boxes, key=lambda b: -(b.x1 - b.x0) * (b.y1 - b.y0)):
            x, y, w, h = _scaled_box(b, s.height, s.width, size)
            out[int(np.floor(y)):int(np.ceil(y + h)), int(np.floor(x)):int(np.ceil(x + w))] = index(b.label)
        out[~mask] = 0
    out[mask & (out == 0)] = index(s.class_name if s.class_name not in (None, "good")
                                   else next(iter(labels), None))
    return out


def _subset(n: int, limit: int | None, seed: int) -> list[int]:
    if limit is None or limit >= n:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, size=limit, replace=False).tolist())


def load_normals(train: Path, size: int, max_train: int | None, seed: int, progress: bool
                 ) -> tuple[np.ndarray, list[Path], int]:
    """Normal training images as N x size x size x C uint8, their paths, and C (3 if any source is RGB)."""
    ds = open_dataset(train)
    ds = ds.select(split="train", normal=True) if ds.format == "mvtec" else ds.select(normal=True)
    if len(ds) == 0:
        raise DefectgenError(train, "no normal images found to train on (expected train/good/ or a folder of "
                             "normal images)")
    ds.entries = [ds.entries[i] for i in _subset(len(ds), max_train, seed)]
    samples = ds.read_all("normals", progress)
    channels = 3 if any(s.channels == 3 for s in samples) else 1
    return np.stack([_resize_image(s.image, size, channels) for s in samples]), [s.path for s in samples], channels


def load_test(test: Path, size: int, channels: int, max_test: int | None, seed: int, progress: bool
              ) -> dict[str, Any]:
    """The real test set: images, bool masks (all-False for normals), labels, class names, paths."""
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
    masks = [_resize_mask(s.defect_mask(), size) if not n else np.zeros((size, size), bool)
             for s, n in zip(samples, normal, strict=True)]
    boxes = [[] if n else _boxes_of(s, m, size) for s, m, n in zip(samples, masks, normal, strict=True)]
    box_classes = sorted({b["class"] for bs in boxes for b in bs})
    if not any(normal) and len(box_classes) < 2:
        raise DefectgenError(test, "the test set has no normal images: image AUROC needs both kinds")
    return {
        "images": np.stack([_resize_image(s.image, size, channels) for s in samples]),
        "masks": np.stack(masks),
        "labels": np.array([not n for n in normal]),
        "classes": ["good" if n else (s.class_name or "defect") for s, n in zip(samples, normal, strict=True)],
        "paths": [s.path for s in samples],
        "boxes": boxes,
        "box_classes": box_classes,  # two or more: a multi-class detection test, scored with COCO mAP too
    }


def load_labeled(labeled: Path, size: int, channels: int, test_classes: Sequence[str], progress: bool
                 ) -> dict[str, Any]:
    """Real labeled defects (any layout; an MVTec root gives its labeled/ split, a VOC root its train/ split):
    images, masks and class label maps at `size`, the class names, and the samples as read (for copypaste)."""
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
    masks = [_resize_mask(s.defect_mask(), size) for s in samples]
    label_maps = [_label_map(s, m, size, names) for s, m in zip(samples, masks, strict=True)]
    missing = sorted(set(names) - set(test_classes))
    if missing:
        raise DefectgenError(labeled, f"labeled class(es) {', '.join(missing)} do not occur in the test set "
                             f"(its classes: {', '.join(sorted(test_classes)) or 'none'})")
    return {"images": np.stack([_resize_image(s.image, size, channels) for s in samples]),
            "masks": np.stack(masks), "labels": np.stack(label_maps), "class_names": names, "samples": samples}


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


def _clean_of(image: np.ndarray, mask: np.ndarray, normals_small: np.ndarray, normals: np.ndarray
              ) -> tuple[np.ndarray, str]:
    """The clean normal a synthetic image was made from: the pipeline keeps the outside of the mask
    bit-exact, so the training normal that matches outside the mask is it; failing that, the masked region
    is inpainted from its surroundings (an approximation the report counts)."""
    small = cv2.resize(image.astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA).reshape(32, 32, -1)
    outside = ~cv2.resize(cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)), (32, 32),
                          interpolation=cv2.INTER_NEAREST).astype(bool)
    if outside.sum() > 32:
        diff = np.abs(normals_small - small[None]).mean(axis=3)[:, outside].mean(axis=1)
        best = int(np.argmin(diff))
        if diff[best] < 2.0:
            return normals[best], "matched"
    return _inpainted(image, mask), "inpainted"


def _inpainted(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = cv2.inpaint(image if image.shape[2] == 3 else image[:, :, 0], mask.astype(np.uint8), 5, cv2.INPAINT_TELEA)
    return out.reshape(image.shape)


def load_synthetic(synthetic: Path | Sequence[Path], size: int, channels: int, normals: np.ndarray, progress: bool,
                   canvases: dict[Path, Sample] | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int], np.ndarray, list[str]]:
    """Synthetic defect images, masks and their clean normals at `size`, how the cleans were found, and the
    class label maps with their class names (see `_label_map`). Several sets (one per class, say) are pooled.

    canvases: real labeled images by resolved path. A synthetic image painted on one of them (a dataset without
    normal images, such as NEU-DET, paints on its labeled defects) keeps that image's own labeled defects in its
    mask and label map: they are in the picture, and training on them as background would teach a lie."""
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
    for s in samples:
        img, m = _resize_image(s.image, size, channels), _resize_mask(s.mask, size)
        lab = _label_map(s, m, size, names)
        src = declared.get(s.path.resolve()) if s.path is not None else None
        canvas = (canvases or {}).get(src) if src is not None else None
        if canvas is not None:  # the canvas's own defects, under the painted one
            under = _label_map(canvas, _resize_mask(canvas.defect_mask(), size), size, names)
            lab = np.where(m, lab, under)
            m = m | (under > 0)
            how["on_labeled_canvas"] += 1
        labels.append(lab)
        if src is not None:
            from defectgen.io.images import read_image

            clean, kind = _resize_image(read_image(src), size, channels), "declared"
        elif normals_small is not None:
            clean, kind = _clean_of(img, m, normals_small, normals)
        else:
            clean, kind = _inpainted(img, m), "inpainted"
        how[kind] += 1
        images.append(img)
        masks.append(m)
        cleans.append(clean)
    return np.stack(images), np.stack(masks), np.stack(cleans), how, np.stack(labels), names


def draem_set(normals: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n DRAEM-style defects on randomly chosen normals with Perlin masks (textures: the normals)."""
    from defectgen.masks import MaskGenerator
    from defectgen.synth.draem import DraemGenerator

    rng = np.random.default_rng([seed, 7])
    pick = rng.integers(len(normals), size=n)
    size = normals.shape[1]
    masks = [MaskGenerator("perlin", seed=seed)(i, size, size)[0] for i in range(n)]
    gen = DraemGenerator(textures=list(normals))
    floats = [normals[i].astype(np.float32) / 255.0 for i in pick]
    out = gen.generate(floats, masks, [int(seed) * 100003 + i for i in range(n)], [None] * n)
    return (np.stack([from_float(o, np.uint8) for o in out]), np.stack(masks), normals[pick])


def _labels_from_classes(masks: np.ndarray, per_image: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    names = sorted(set(per_image))
    idx = np.array([names.index(c) + 1 for c in per_image], np.uint8)
    return (masks * idx[:, None, None]).astype(np.uint8), names


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two training sets in one: classes merged by name, label maps re-indexed."""
    names = list(a["class_names"]) + [c for c in b["class_names"] if c not in a["class_names"]]
    remap = np.array([0] + [names.index(c) + 1 for c in b["class_names"]], np.uint8)
    cleans = None if a["cleans"] is None or b["cleans"] is None else np.concatenate([a["cleans"], b["cleans"]])
    return {"images": np.concatenate([a["images"], b["images"]]), "masks": np.concatenate([a["masks"], b["masks"]]),
            "cleans": cleans, "labels": np.concatenate([a["labels"], remap[b["labels"]]]), "class_names": names,
            "synthetic_images": a["synthetic_images"] + b["synthetic_images"],
            "real_images": a["real_images"] + b["real_images"]}


def _training_set(images=None, masks=None, cleans=None, labels=None, class_names=(), synthetic_images=0,
                  real_images=0) -> dict[str, Any]:
    return {"images": images, "masks": masks, "cleans": cleans, "labels": labels, "class_names": list(class_names),
            "synthetic_images": synthetic_images, "real_images": real_images}


def _copypaste(normals: np.ndarray, labeled: dict[str, Any], n: int, seed: int) -> dict[str, Any]:
    from defectgen.synth.copypaste import copypaste_set  # synth sits beside detect: imported when the run needs it
    images, masks, cleans, per_image = copypaste_set(normals, labeled["samples"], n, seed)
    labels, names = _labels_from_classes(np.asarray(masks, bool), per_image)
    return _training_set(np.asarray(images), np.asarray(masks, bool), np.asarray(cleans), labels, names,
                         synthetic_images=len(images))


def _per_class(test: dict[str, Any], maps: np.ndarray, scores: np.ndarray) -> dict[str, dict[str, float]]:
    classes = sorted({c for c, lab in zip(test["classes"], test["labels"], strict=True) if lab})
    good = ~test["labels"]
    result = {}
    for c in classes:
        keep = good | np.array([x == c for x in test["classes"]])
        result[c] = evaluate(test["labels"][keep], scores[keep], test["masks"][keep], maps[keep])
    return result


def _overlay(image: np.ndarray, mask: np.ndarray, amap: np.ndarray | None, lo: float, hi: float) -> np.ndarray:
    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image.copy()
    if amap is not None:
        norm = np.clip((amap - lo) / max(hi - lo, 1e-12), 0, 1)
        heat = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
        rgb = cv2.addWeighted(rgb, 0.5, heat, 0.5, 0)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(rgb, contours, -1, (255, 255, 255) if amap is not None else (255, 0, 0), 1)
    return rgb


def _write_roc(path: Path, test: dict[str, Any], curves: dict[str, dict[str, np.ndarray]]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.5))
    FigureCanvasAgg(fig)  # Agg canvas without touching pyplot's global backend
    for ax, (kind, title) in zip(fig.subplots(1, 2), (("image", "image ROC"), ("pixel", "pixel ROC")),
                                 strict=True):
        for name, c in curves.items():
            fpr, tpr, _ = roc_curve(test["labels"] if kind == "image" else test["masks"],
                                    c["scores"] if kind == "image" else c["maps"])
            if fpr.size > 5000:  # millions of pixel thresholds draw the same line as a few thousand
                keep = np.unique(np.linspace(0, fpr.size - 1, 5000).astype(int))
                fpr, tpr = fpr[keep], tpr[keep]
            ax.plot(fpr, tpr, label=f"{name} ({c['metrics'][kind + '_auroc']:.3f})")
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
        ax.set(title=title, xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1))
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())


def _fmt(v: float) -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"


def markdown_table(results: dict[str, Any]) -> str:
    """The headline table plus per-class image AUROC and AUPRO."""
    runs = results["runs"]
    lines = [f"# defectgen validate: {results['config']['detector']}", "",
             f"test set `{results['config']['test']}`: {results['test']['normal']} normal, "
             f"{results['test']['defect']} defect images at {results['config']['resolution']}x"
             f"{results['config']['resolution']}; backbone `{results['config']['backbone']}`; seed "
             f"{results['config']['seed']}; wall time {results['wall_time_s']:.0f} s.", "",
             "| run | I-AUROC | P-AUROC | AUPRO@0.3 | pixel AP | I-F1max | P-F1max | train s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        m = r["metrics"]
        lines.append(f"| {name} | " + " | ".join(_fmt(m.get(k)) for k in METRICS) + f" | {r['train_s']:.0f} |")
    classes = sorted({c for r in runs.values() for c in r["per_class"]})
    if classes:
        lines += ["", "Per class (I-AUROC / AUPRO):", "",
                  "| run | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
        for name, r in runs.items():
            cells = [f"{_fmt(r['per_class'][c]['image_auroc'])} / {_fmt(r['per_class'][c]['aupro'])}"
                     for c in classes]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    coco = {name: r["coco"] for name, r in runs.items() if r.get("coco")}
    if coco:
        names = sorted({c for r in coco.values() for c in r["per_class"]})
        lines += ["", "COCO box mAP (boxes from the map's connected components; class-agnostic: every box one "
                  "class):", "", "| run | mAP@0.5 | mAP@[.5:.95] | agnostic mAP@0.5 | " + " | ".join(
                      f"{c} mAP@0.5" for c in names) + " |", "|---|---|---|---|" + "---|" * len(names)]
        for name, r in coco.items():
            lines.append(f"| {name} | {_fmt(r['map50'])} | {_fmt(r['map'])} | {_fmt(r['agnostic_map50'])} | "
                         + " | ".join(_fmt(r["per_class"].get(c, {}).get("map50")) for c in names) + " |")
    for run, why in results.get("skipped", {}).items():
        lines += ["", f"Skipped `{run}`: {why}."]
    return "\n".join(lines) + "\n"


def run_validation(
    detector: str, train: str | Path | None, test: str | Path, out: str | Path,
    synthetic: str | Path | Sequence[str | Path] | None = None,
    baselines: Sequence[str] = DEFAULT_BASELINES, backbone: str = "tiny", resolution: int = 256, seed: int = 0,
    steps: int = 1000, batch_size: int = 8, lr: float = 1e-3, coreset_ratio: float = 0.1,
    n_draem: int | None = None, max_train: int | None = None, max_test: int | None = None, n_overlays: int = 8,
    device: str | None = None, overwrite: bool = False, progress: bool = True, save_models: bool = False,
    student_width: int | None = None, positive_quantile: float | None = None,
    real_labeled: str | Path | None = None,
) -> dict[str, Any]:
    """Train `detector` once per run (synthetic set, then each baseline), score each on the real test set,
    write the report to `out`, and return the results dict (also written as report.json).

    train: the normal images; None for a supervised detector on a dataset without normals (NEU-DET), which then
    learns from defect images alone. synthetic: one set, or several pooled (one folder per class, say).

    real_labeled: real labeled defects (any layout `open_dataset` reads; an MVTec root gives its labeled/
    split), needed by the copypaste, real and real+synthetic baselines. n_draem: how many defects the draem and
    copypaste baselines make (default: as many as the synthetic set has, else 100)."""
    start = time.perf_counter()
    det_cls = get_detector(detector)
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
        raise DefectgenError(None, "nothing to run: give --synthetic or at least one baseline"
                             + (f" ({skipped['none']})" if skipped else ""))
    need = [b for b in baselines if b in NEEDS_LABELED]
    if need and real_labeled is None:
        raise DefectgenError(None, f"baseline(s) {', '.join(need)} need --real-labeled: a folder of real labeled "
                             "defects with masks or boxes")
    if "real+synthetic" in baselines and synthetic is None:
        raise DefectgenError(None, "baseline real+synthetic needs --synthetic")
    if resolution < 32 or resolution % 32:
        raise DefectgenError(None, f"--resolution must be a multiple of 32 and at least 32, got {resolution}")
    if train is None:
        if not det_cls.supervised:
            raise DefectgenError(None, f"{detector} learns what normal looks like: it needs normal training "
                                 "images (--train)")
        no_normals = [b for b in baselines if b in ("draem", "copypaste")]
        if no_normals:
            raise DefectgenError(None, f"baseline(s) {', '.join(no_normals)} paint defects on normal images: "
                                 "give --train normals, or leave them out")
    train = Path(train) if train is not None else None
    test, out = Path(test), Path(out)
    if synthetic is not None:
        synthetic = ([Path(synthetic)] if isinstance(synthetic, (str, Path)) else [Path(p) for p in synthetic])
    real_labeled = Path(real_labeled) if real_labeled is not None else None
    torch.manual_seed(seed)
    dev = pick_device(device)

    # every input is read and every baseline made before the output folder is touched
    if train is not None:
        normals, _, channels = load_normals(train, resolution, max_train, seed, progress)
    else:  # defect images are the only training images; detectors run on 3 channels
        normals, channels = np.zeros((0, resolution, resolution, 3), np.uint8), 3
    test_set = load_test(test, resolution, channels, max_test, seed, progress)
    test_classes = sorted({c for c in test_set["classes"] if c != "good"} | set(test_set["box_classes"]))
    labeled = None
    if real_labeled is not None:  # checked even when no run uses it: a bad input is reported, not ignored
        labeled = load_labeled(real_labeled, resolution, channels, test_classes, progress)
        if not need:
            print(f"note: no run uses --real-labeled (baselines {', '.join(NEEDS_LABELED)} do)", file=sys.stderr,
                  flush=True)
    runs_data: dict[str, dict[str, Any]] = {}
    clean_sources = None
    if synthetic is not None:
        canvases = {s.path.resolve(): s for s in labeled["samples"] if s.path is not None} if labeled else None
        images, masks, cleans, clean_sources, labels, names = load_synthetic(synthetic, resolution, channels,
                                                                              normals, progress, canvases)
        runs_data["synthetic"] = _training_set(images, masks, cleans, labels, names, synthetic_images=len(images))
    n_syn = n_draem or (len(runs_data["synthetic"]["images"]) if synthetic is not None else 100)
    real = None if labeled is None else _training_set(labeled["images"], labeled["masks"], None, labeled["labels"],
                                                      labeled["class_names"], real_images=len(labeled["images"]))
    for b in baselines:
        if b == "none":
            runs_data[b] = _training_set()
        elif b == "draem":
            images, masks, cleans = draem_set(normals, n_syn, seed)
            runs_data[b] = _training_set(images, masks, cleans, masks.astype(np.uint8), ["defect"],
                                         synthetic_images=len(images))
        elif b == "copypaste":
            runs_data[b] = _copypaste(normals, labeled, n_syn, seed)
            runs_data[b]["real_images"] = len(labeled["images"])
        elif b == "real":
            runs_data[b] = real
        else:
            runs_data[b] = _merge(runs_data["synthetic"], real)
    for note in skipped.values():
        print(f"note: {note}; the none baseline is skipped", file=sys.stderr, flush=True)
    folder = OutputFolder(out, overwrite=overwrite, resumable=False, verb="validate",
                          protect=[train, test, *(synthetic or []), backbone, real_labeled])
    out = folder.prepare()
    try:

        bb = load_backbone(backbone, dev)
        options = DetectorOptions(seed=seed, sigma=4.0 * resolution / 256, steps=steps, batch_size=batch_size, lr=lr,
                                  coreset_ratio=coreset_ratio, positive_quantile=positive_quantile, width=student_width)
        boxes_too = det_cls.produces_boxes and len(test_set["box_classes"]) >= 2
        rng = np.random.default_rng(seed)
        show = _overlay_picks(test_set, n_overlays, rng)
        results: dict[str, Any] = {"runs": {}}
        curves: dict[str, dict[str, Any]] = {}
        overlay_maps: dict[str, np.ndarray] = {}
        for name, data in runs_data.items():
            t0 = time.perf_counter()
            model = det_cls.from_options(bb, options)
            model.fit(normals, data["images"], data["masks"], progress=progress, cleans=data["cleans"],
                      labels=data["labels"], class_names=data["class_names"], desc=f"[{name}] {detector}")
            train_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            run: dict[str, Any] = {}
            if boxes_too:
                maps, scores, found = model.predict_with_boxes(test_set["images"])
                run["coco"] = coco_map(test_set["boxes"], found, test_set["box_classes"])
            else:
                maps, scores = model.predict(test_set["images"])
            metrics = evaluate(test_set["labels"], scores, test_set["masks"], maps)
            per_class = _per_class(test_set, maps, scores)
            results["runs"][name] = {"metrics": metrics, "per_class": per_class, "train_s": train_s,
                                     "test_s": time.perf_counter() - t1,
                                     "synthetic_images": int(data["synthetic_images"]),
                                     "real_images": int(data["real_images"]), **run, **model.summary()}
            curves[name] = {"scores": scores, "maps": maps, "metrics": metrics}
            overlay_maps[name] = (maps[show], float(np.percentile(maps, 1)), float(np.percentile(maps, 99.9)))
            if save_models:
                model.save(out / f"{detector}_{name}.safetensors")
            if progress:
                print(f"[{name}] " + ", ".join(f"{k} {_fmt(v)}" for k, v in metrics.items())
                      + (f", map50 {_fmt(run['coco']['map50'])}" if "coco" in run else ""), flush=True)
            del maps

        _write_roc(out / "roc.png", test_set, curves)
        curves.clear()
        overlay_files = _write_overlays(out / "overlays", test_set, show, overlay_maps)
        uses = set(det_cls.options)
        results["config"] = {
            "detector": detector, "train": str(train) if train else None,
            "synthetic": (str(synthetic[0]) if len(synthetic) == 1 else [str(p) for p in synthetic]) if synthetic
            else None,
            "real_labeled": str(real_labeled) if real_labeled else None,
            "test": str(test), "baselines": list(baselines), "backbone": backbone, "resolution": resolution,
            "seed": seed, "steps": steps if "steps" in uses else None, "student_width": student_width,
            "batch_size": batch_size, "lr": lr,
            "coreset_ratio": coreset_ratio if "coreset_ratio" in uses else None,
            "positive_quantile": positive_quantile if "positive_quantile" in uses else None,
            "n_draem": n_syn if "draem" in baselines else None, "n_copypaste": n_syn if "copypaste" in baselines
            else None, "max_train": max_train, "max_test": max_test, "device": str(dev),
        }
        if skipped:
            results["skipped"] = skipped
        results["train"] = {"normals": int(len(normals)), "channels": channels}
        if labeled is not None:
            results["train"]["labeled_defects"] = int(len(labeled["images"]))
            results["train"]["labeled_classes"] = labeled["class_names"]
        results["test"] = {"images": int(len(test_set["labels"])), "normal": int((~test_set["labels"]).sum()),
                           "defect": int(test_set["labels"].sum()),
                           "classes": {c: test_set["classes"].count(c) for c in sorted(set(test_set["classes"]))}}
        if boxes_too:
            results["test"]["boxes"] = {c: sum(b["class"] == c for bs in test_set["boxes"] for b in bs)
                                        for c in test_set["box_classes"]}
        if clean_sources is not None:
            results["synthetic_clean_sources"] = clean_sources
        results["hardware"] = hardware(dev)
        results["wall_time_s"] = time.perf_counter() - start
        results["files"] = {"json": "report.json", "markdown": "report.md", "roc": "roc.png", "overlays": overlay_files}
        results["runs"] = _json_safe(results["runs"])
        atomic_write_text(out / "report.md", markdown_table(results))
        atomic_write_json(out / "report.json", results)
        return results
    except BaseException:
        folder.abandon()  # a report is written whole or not at all: no half report folder stays behind
        raise


def _json_safe(obj: Any) -> Any:
    """JSON has no NaN: undefined metrics are written as null (nested dicts and lists too)."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return None if np.isnan(obj) else float(obj)
    return obj


def _overlay_picks(test: dict[str, Any], n: int, rng: np.random.Generator) -> np.ndarray:
    """Mostly defects (that is what one looks at), one in four normal."""
    defects, normals = np.flatnonzero(test["labels"]), np.flatnonzero(~test["labels"])
    nd = min(len(defects), n - n // 4)
    nn = min(len(normals), n - nd)
    return np.sort(np.r_[rng.choice(defects, nd, replace=False), rng.choice(normals, nn, replace=False)]
                   ).astype(int)


def _write_overlays(folder: Path, test: dict[str, Any], show: np.ndarray,
                    maps: dict[str, tuple[np.ndarray, float, float]]) -> list[str]:
    """One PNG per test image: the image with its ground truth, then each run's map (white: ground truth)."""
    from defectgen.io.images import write_image

    files = []
    for j, i in enumerate(show):
        tiles = [_overlay(test["images"][i], test["masks"][i], None, 0, 1)]
        tiles += [_overlay(test["images"][i], test["masks"][i], m[j], lo, hi) for m, lo, hi in maps.values()]
        strip = np.concatenate([np.pad(t, ((0, 0), (0, 4), (0, 0)), constant_values=255) for t in tiles], axis=1)
        stem = test["paths"][i].stem if test["paths"][i] is not None else f"{i:04d}"
        name = f"{j:02d}_{test['classes'][i]}_{stem}.png"
        write_image(folder / name, strip)
        files.append(f"overlays/{name}")
    if files:
        atomic_write_text(folder / "README.txt", "columns: input with ground truth (red), then " + ", ".join(maps)
           + " (anomaly map, blue low to red high; white: ground truth)\n")
    return files
