"""`defectgen export`: a synthesized set, or any dataset defectgen reads, in the layout another tool trains with.

One options record (`ExportOptions`) in, one folder out:

  yolo      images/{train,val}/*.png, labels/{train,val}/*.txt (`class cx cy w h`, fractions of the image) and
            data.yaml with `path` (the folder, absolute), `train: images/train`, `val: images/val` and `names`
            (id: name), as Ultralytics' coco8.yaml has them
  yolo-seg  the same with one polygon line per connected region of the exact mask, traced with cv2.findContours;
            holes are bridged into their outer ring by a zero-width cut, so a region with holes stays one line
            and its holes stay open (`io/yolo.py`)
  mvtec     train/good/ (normals), test/good/ (`val_share` of the normals), test/<class>/ (every defect) and
            ground_truth/<class>/<stem>_mask.png (0/255): the MVTec AD layout anomalib's MVTecAD and Folder read
  voc       JPEGImages/*.jpg (8 bit, quality 95: VOC readers open only .jpg), Annotations/*.xml (1-based inclusive
            pixel boxes, rounded outwards) and ImageSets/Main/{train,val,trainval}.txt

Objects: the layout's own boxes where it has them (COCO, VOC, YOLO), else one per connected region of the mask
(8-connectivity, as CocoBuilder annotates), with the image's class; a traced polygon takes the class of the own
box it overlaps most. Normal images (the set's own and those `with_normals` names) get empty label files (YOLO's
background images) or annotations without objects (VOC); the MVTec layout needs them for train/good and test/good
and refuses to export without any.

Images are numbered 000000, 000001, ... in reading order (the set's, then the added normals), so every layout's
names sort alike (anomalib pairs masks with images by sorted name); defectgen-export.json maps each file back to
its source and records the format, the version, the counts and the split's seed. The split is drawn per class
(the normals are one more class) with `seed`: val_share * n of each, rounded half up, to val (MVTec: of the
normals, to test/good), and at least one image on each side when there are two or more. PNG keeps 8 or 16 bits.

Everything is written through `OutputFolder` into `out_dir` only: a non-empty folder is refused without
`overwrite`, an `out_dir` inside the set or the normals is refused, and a failed export removes what it wrote.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from defectgen.errors import DefectgenError
from defectgen.io import yolo
from defectgen.io.datasets import Dataset, Entry, open_dataset
from defectgen.io.files import atomic_write_json, atomic_write_text, resolve_inside
from defectgen.io.images import to_uint8, write_image, write_mask
from defectgen.io.output import check_outside_inputs, output_folder
from defectgen.io.sample import Box, Sample

FORMATS = ("yolo", "yolo-seg", "mvtec", "voc")
MANIFEST = "defectgen-export.json"
DEFAULT_CLASS = "defect"
NORMAL = "good"


@dataclass(frozen=True)
class ExportOptions:
    """What `defectgen export` takes; the field names are the CLI's option names (errors name them)."""

    source: Path
    format: str
    out_dir: Path
    with_normals: Path | None = None
    val_share: float = 0.2
    seed: int = 0
    set_format: str = "auto"
    overwrite: bool = False
    progress: bool = False

    def __post_init__(self):
        for name in ("source", "out_dir", "with_normals"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))

    def check(self) -> None:
        if self.format not in FORMATS:
            raise DefectgenError(None, f"unknown `format` {self.format!r}; choose from {', '.join(FORMATS)}")
        if not 0 < self.val_share < 1:
            raise DefectgenError(None, f"`val_share` must lie between 0 and 1 (both excluded), got "
                                 f"{self.val_share:g}")


@dataclass
class Item:
    """One image to write: where it is read from, its number, its split and whether it is a normal."""

    dataset: Dataset
    entry: Entry
    stem: str
    split: str  # yolo, voc: train | val; mvtec: train | test
    normal: bool


@dataclass
class Plan:
    items: list[Item]
    classes: list[str]  # the defect classes the listing names, in the order their ids are given
    source_format: str


@dataclass
class ExportResult:
    out_dir: Path
    format: str
    counts: dict[str, Any]

    def summary(self) -> str:
        c = self.counts
        splits = ", ".join(f"{k} {v}" for k, v in c["splits"].items())
        return (f"exported {c['images']} images to {self.out_dir} as {self.format} ({splits}; {c['objects']} "
                f"objects in {len(c['classes'])} classes)\n{_HINTS[self.format](self.out_dir)}")


_HINTS = {
    "yolo": lambda out: f"train with: yolo detect train data={out}/data.yaml model=yolo11n.pt",
    "yolo-seg": lambda out: f"train with: yolo segment train data={out}/data.yaml model=yolo11n-seg.pt",
    "mvtec": lambda out: f"anomalib: MVTecAD(root=\"{out.resolve().parent}\", category=\"{out.resolve().name}\"); "
                         f"defectgen: validate --test {out}",
    "voc": lambda out: "torchvision: VOCDetection(ROOT, year=\"2012\", image_set=\"train\") with this folder at "
                       "ROOT/VOCdevkit/VOC2012",
}


def export_set(options: ExportOptions) -> ExportResult:
    """Write the set in `options.format` to `options.out_dir`, whole or not at all (see the module docstring)."""
    from defectgen.progress import bar

    options.check()
    check_outside_inputs(options.out_dir, (options.source, options.with_normals))
    plan = make_plan(options)
    with output_folder(options.out_dir, overwrite=options.overwrite, resumable=False, verb="export",
                       protect=(options.source, options.with_normals)) as out:
        writer = _WRITERS[options.format](out, plan.classes)
        files = []
        for item in bar(plan.items, total=len(plan.items), desc=f"exporting {options.format}", unit="img",
                        disable=not options.progress):
            relative = writer.add(item.dataset.load(item.entry), item)
            files.append({"file": relative, "source": str(item.entry.image_path), "split": item.split})
        counts = writer.finish()
        atomic_write_json(out / MANIFEST, {
            "made_by": "defectgen", "version": _version(), "format": options.format,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source": str(options.source), "source_format": plan.source_format,
            "normals": None if options.with_normals is None else str(options.with_normals),
            "val_share": options.val_share, "seed": options.seed, "counts": counts, "files": files,
        })
    return ExportResult(options.out_dir, options.format, counts)


def _version() -> str:
    from defectgen import __version__

    return __version__


# ---- what goes where ----------------------------------------------------------------------------------------------

def make_plan(options: ExportOptions) -> Plan:
    """List the set and the added normals, number the images and draw the split (nothing is read or written)."""
    ds = open_dataset(options.source, options.set_format)
    if all(e.is_normal for e in ds.entries):
        raise DefectgenError(options.source, f"holds no defect images (read as '{ds.format}' layout); nothing to "
                             "label")
    pairs = [(ds, e) for e in ds.entries] + [(extra, e) for extra, e in _added_normals(options, ds)]
    normal = [e.is_normal for _, e in pairs]
    if options.format == "mvtec" and not any(normal):
        raise DefectgenError(options.source, "the mvtec layout needs normal images for train/good and test/good "
                             "and the set has none; add them with `with_normals`")
    width = max(6, len(str(len(pairs) - 1)))
    if options.format == "mvtec":
        normals = [i for i, n in enumerate(normal) if n]
        held_out = {normals[i] for i in _val_picks([NORMAL] * len(normals), options.val_share, options.seed)}
        splits = ["test" if not n or i in held_out else "train" for i, n in enumerate(normal)]
    else:
        keys = [NORMAL if n else (e.class_name or DEFAULT_CLASS) for (_, e), n in zip(pairs, normal, strict=True)]
        picks = _val_picks(keys, options.val_share, options.seed)
        splits = ["val" if i in picks else "train" for i in range(len(pairs))]
    items = [Item(d, e, f"{i:0{width}d}", s, n)
             for i, ((d, e), s, n) in enumerate(zip(pairs, splits, normal, strict=True))]
    return Plan(items, ds.classes, ds.format)


def _added_normals(options: ExportOptions, ds: Dataset) -> list[tuple[Dataset, Entry]]:
    """The normal images of `with_normals` (any layout), less those the set itself holds."""
    if options.with_normals is None:
        return []
    normals = open_dataset(options.with_normals).select(normal=True)
    if not len(normals):
        raise DefectgenError(options.with_normals, "no normal images found (given with `with_normals`)")
    seen = {e.image_path.resolve() for e in ds.entries}
    return [(normals, e) for e in normals.entries if e.image_path.resolve() not in seen]


def _val_picks(keys: list[str], share: float, seed: int) -> set[int]:
    """Indices drawn for val: share * n of each key's members (rounded half up), at least one in and one out when
    there are two or more."""
    rng = np.random.default_rng(seed)
    picks: set[int] = set()
    for key in sorted(set(keys)):
        members = [i for i, k in enumerate(keys) if k == key]
        order = rng.permutation(len(members))
        picks |= {members[j] for j in order[:math.floor(share * len(members) + 0.5)]}
    if len(keys) >= 2 and not picks:
        picks = {int(rng.integers(len(keys)))}
    if len(keys) >= 2 and len(picks) == len(keys):
        picks.discard(int(rng.choice(sorted(picks))))
    return picks


# ---- objects of one sample ----------------------------------------------------------------------------------------

def _own_boxes(sample: Sample) -> list[Box]:
    """The layout's own boxes (COCO, VOC, YOLO); a mask file's reader makes one box of the whole mask instead."""
    return list(sample.boxes) if sample.mask_path is None else []


def objects(sample: Sample) -> list[tuple[str, Box]]:
    """(class, box) per object: the layout's own boxes, else one per connected region of the mask."""
    if sample.is_normal:
        return []
    fallback = sample.class_name or DEFAULT_CLASS
    own = _own_boxes(sample)
    if own:
        return [(b.label or fallback, b) for b in own]
    count, _, stats, _ = cv2.connectedComponentsWithStats(sample.defect_mask().astype(np.uint8), connectivity=8)
    return [(fallback, Box(int(x), int(y), int(x + w), int(y + h), fallback)) for x, y, w, h, _ in stats[1:count]]


def traced(sample: Sample) -> list[tuple[str, np.ndarray]]:
    """(class, polygon) per connected region of the exact mask (io/yolo.py's rule for holes), in the order of the
    own boxes they match (so the image's class, their most common, wins a tie when read back)."""
    if sample.is_normal:
        return []
    fallback, own = sample.class_name or DEFAULT_CLASS, _own_boxes(sample)
    matched = sorted((_matching_box(p, own), k, p) for k, p in enumerate(yolo.mask_polygons(sample.defect_mask())))
    return [(own[i].label or fallback if i < len(own) else fallback, p) for i, _, p in matched]


def _matching_box(polygon: np.ndarray, boxes: list[Box]) -> int:
    """The index of the box the polygon's extent overlaps most (len(boxes) where none overlaps)."""
    x0, y0 = polygon.min(axis=0)
    x1, y1 = polygon.max(axis=0) + 1
    best, index = 0.0, len(boxes)
    for i, b in enumerate(boxes):
        overlap = max(0.0, min(x1, b.x1) - max(x0, b.x0)) * max(0.0, min(y1, b.y1) - max(y0, b.y0))
        if overlap > best:
            best, index = overlap, i
    return index


# ---- writers ------------------------------------------------------------------------------------------------------

class _Writer:
    """Writes items into `out` (every path through resolve_inside) and counts what it wrote."""

    def __init__(self, out: Path, classes: list[str]):
        self.out = out
        self.ids = {name: i for i, name in enumerate(classes)}  # class ids; a name met later gets the next id
        self.splits: Counter[str] = Counter()
        self.per_class: Counter[str] = Counter()
        self.images = self.defects = 0

    def path(self, relative: str) -> Path:
        return resolve_inside(self.out, relative, what="export path")

    def class_id(self, name: str) -> int:
        return self.ids.setdefault(name, len(self.ids))

    def count(self, item: Item, split: str, classes: list[str]) -> None:
        self.images += 1
        self.defects += not item.normal
        self.splits[split] += 1
        self.per_class.update(classes)

    def add(self, sample: Sample, item: Item) -> str:
        raise NotImplementedError

    def finish(self) -> dict[str, Any]:
        return {"images": self.images, "defect_images": self.defects, "normal_images": self.images - self.defects,
                "objects": sum(self.per_class.values()), "classes": dict(sorted(self.per_class.items())),
                "splits": dict(sorted(self.splits.items()))}


class _YoloWriter(_Writer):
    segments = False

    def add(self, sample: Sample, item: Item) -> str:
        image = f"images/{item.split}/{item.stem}.png"
        write_image(self.path(image), sample.image)
        h, w = sample.height, sample.width
        if self.segments:
            found = traced(sample)
            lines = [yolo.polygon_line(self.class_id(c), p, h, w) for c, p in found]
        else:
            found = objects(sample)
            lines = [yolo.box_line(self.class_id(c), b, h, w) for c, b in found]
        atomic_write_text(self.path(f"labels/{item.split}/{item.stem}.txt"), "".join(f"{x}\n" for x in lines))
        self.count(item, item.split, [c for c, _ in found])
        return image

    def finish(self) -> dict[str, Any]:
        for folder in ("images/train", "images/val", "labels/train", "labels/val"):
            self.path(folder).mkdir(parents=True, exist_ok=True)  # a split without images still exists
        data = {"path": str(self.out.resolve()), "train": "images/train", "val": "images/val",
                "names": {i: name for name, i in self.ids.items()}}
        atomic_write_text(self.path(yolo.DATA_YAML), _DATA_YAML_HEAD + yaml.safe_dump(
            data, sort_keys=False, allow_unicode=True))
        return super().finish()


_DATA_YAML_HEAD = ("# written by defectgen export; `path` is this folder where it was written: after moving the "
                   "folder,\n# correct it or delete the line (Ultralytics then takes the folder holding this file)\n")


class _YoloSegWriter(_YoloWriter):
    segments = True


class _MvtecWriter(_Writer):
    def add(self, sample: Sample, item: Item) -> str:
        if item.normal:
            image = f"{item.split}/{NORMAL}/{item.stem}.png"
            write_image(self.path(image), sample.image)
            self.count(item, f"{item.split}/{NORMAL}", [])
            return image
        cls = _folder_name(sample.class_name or DEFAULT_CLASS)
        image = f"test/{cls}/{item.stem}.png"
        write_image(self.path(image), sample.image)
        write_mask(self.path(f"ground_truth/{cls}/{item.stem}_mask.png"), sample.defect_mask())
        self.count(item, f"test/{cls}", [cls])
        return image


def _folder_name(name: str) -> str:
    """A class name as one safe folder name (never `good`, which MVTec keeps for normals)."""
    safe = re.sub(r"[^\w.-]+", "_", name).strip("._") or DEFAULT_CLASS
    return f"{safe}_defect" if safe == NORMAL else safe


class _VocWriter(_Writer):
    def __init__(self, out: Path, classes: list[str]):
        super().__init__(out, classes)
        self.lists: dict[str, list[str]] = {"train": [], "val": []}

    def add(self, sample: Sample, item: Item) -> str:
        image = f"JPEGImages/{item.stem}.jpg"
        write_image(self.path(image), to_uint8(sample.image))
        found = objects(sample)
        atomic_write_text(self.path(f"Annotations/{item.stem}.xml"), _voc_xml(f"{item.stem}.jpg", sample, found))
        self.lists[item.split].append(item.stem)
        self.count(item, item.split, [c for c, _ in found])
        return image

    def finish(self) -> dict[str, Any]:
        lists = {**self.lists, "trainval": self.lists["train"] + self.lists["val"]}
        for name, stems in lists.items():
            atomic_write_text(self.path(f"ImageSets/Main/{name}.txt"), "".join(f"{s}\n" for s in sorted(stems)))
        return super().finish()


def _voc_xml(filename: str, sample: Sample, found: list[tuple[str, Box]]) -> str:
    root = ET.Element("annotation")
    for tag, text in (("folder", "JPEGImages"), ("filename", filename)):
        ET.SubElement(root, tag).text = text
    size = ET.SubElement(root, "size")
    for tag, value in (("width", sample.width), ("height", sample.height), ("depth", sample.channels)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for name, b in found:
        obj = ET.SubElement(root, "object")
        for tag, text in (("name", name), ("pose", "Unspecified"), ("truncated", "0"), ("difficult", "0")):
            ET.SubElement(obj, tag).text = text
        box = ET.SubElement(obj, "bndbox")
        corners = (int(np.floor(b.x0)) + 1, int(np.floor(b.y0)) + 1, int(np.ceil(b.x1)), int(np.ceil(b.y1)))
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), corners, strict=True):
            ET.SubElement(box, tag).text = str(value)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


_WRITERS: dict[str, type[_Writer]] = {"yolo": _YoloWriter, "yolo-seg": _YoloSegWriter, "mvtec": _MvtecWriter,
                                      "voc": _VocWriter}
