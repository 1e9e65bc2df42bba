"""Every input layout of the data contract, read into `Sample`s.

Layouts (auto-detected, or named with `format=`):
  folder  a folder of images, recursively: normal images
  mvtec   train/good, test/<class>, ground_truth/<class>/<stem>_mask.png (and labeled/<class>/ pairs, if present)
  pairs   <stem>.<ext> + <stem>_mask.png side by side; the class is the parent folder's name
  voc     images/ + annotations/*.xml (or split folders such as train/ and test/ that each hold those)
  coco    a COCO JSON file (or a folder holding annotations.json, such as defectgen's own output)
  yolo    data.yaml (or images/ beside labels/*.txt): YOLO boxes or YOLO-seg polygons (io/yolo.py); the
          data.yaml splits (train, val, test) or images/ subfolders become the splits

Listing is cheap (paths and labels only); pixels are read when a `Sample` is taken, and checked then.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from defectgen.errors import DefectgenError
from defectgen.io import yolo
from defectgen.io.coco import decode_segmentation, load_coco_json
from defectgen.io.images import image_files, read_image, read_mask
from defectgen.io.sample import Box, Sample
from defectgen.io.yolo import YoloLabels

FORMATS = ("auto", "folder", "mvtec", "pairs", "voc", "coco", "yolo")
MASK_SUFFIX = "_mask"
NORMAL_CLASS = "good"


@dataclass
class Entry:
    """Where one sample lives and what the layout says about it; `Dataset.load` turns it into a `Sample`."""

    image_path: Path
    mask_path: Path | None = None
    class_name: str | None = None
    boxes: list[Box] = field(default_factory=list)
    split: str | None = None
    coco_segmentations: list[tuple[object, str]] | None = None  # (segmentation, class) for COCO sources
    expected_size: tuple[int, int] | None = None  # (H, W) the annotation claims
    annotation_file: Path | None = None
    source: Path | None = None  # a synthesized sample's normal (COCO `source`), when the file still exists
    yolo: YoloLabels | None = None  # YOLO lines in fractions of the image, scaled when the image is read

    @property
    def is_normal(self) -> bool:
        """Defect-free as the layout lists it: class 'good' (or none) and no boxes, mask or labels."""
        return self.class_name in (None, NORMAL_CLASS) and not self.boxes and self.mask_path is None \
            and not self.coco_segmentations and not (self.yolo and self.yolo.lines)


class Dataset:
    """A listed dataset: `len()`, indexing and iteration give `Sample`s (pixels read on access).

    on_bad="skip" skips unreadable samples during iteration and counts them in `skipped`.
    """

    def __init__(self, root: Path, format: str, entries: list[Entry], on_bad: str = "error"):
        if on_bad not in ("error", "skip"):
            raise ValueError("on_bad must be 'error' or 'skip'")
        self.root = root
        self.format = format
        self.entries = entries
        self.on_bad = on_bad
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> Sample:
        return self.load(self.entries[index])

    def read_all(self, what: str, progress: bool = False, required: bool = False) -> list[Sample]:
        """Every sample, read now (with a progress bar named after `what`); `required`: none is an error."""
        from defectgen.progress import bar

        samples = list(bar(self, total=len(self), desc=f"reading {what}", unit="img", disable=not progress))
        if required and not samples:
            raise DefectgenError(self.root, f"no readable {what} images")
        return samples

    def __iter__(self) -> Iterator[Sample]:
        for entry in self.entries:
            try:
                yield self.load(entry)
            except DefectgenError as e:
                if self.on_bad == "error":
                    raise
                self.skipped.append(str(e))

    @property
    def classes(self) -> list[str]:
        """Defect class names in sorted order ('good' excluded)."""
        names = {e.class_name for e in self.entries} | {b.label for e in self.entries for b in e.boxes}
        names |= {c for e in self.entries if e.yolo for c in e.yolo.classes}
        if any(e.coco_segmentations for e in self.entries):
            names |= {c for e in self.entries for _, c in (e.coco_segmentations or [])}
        return sorted(n for n in names if n and n != NORMAL_CLASS)

    @property
    def splits(self) -> list[str]:
        return sorted({e.split for e in self.entries if e.split})

    def class_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(e.class_name or NORMAL_CLASS for e in self.entries).items()))

    def select(
        self, *, split: str | None = None, normal: bool | None = None, classes: list[str] | None = None,
    ) -> Dataset:
        """A view with the entries that match: a split, only normals (True) or only defects (False), some classes."""
        chosen = []
        for e in self.entries:
            if split is not None and e.split != split:
                continue
            if normal is not None and e.is_normal != normal:
                continue
            if classes is not None and e.class_name not in classes:
                continue
            chosen.append(e)
        return Dataset(self.root, self.format, chosen, self.on_bad)

    def labeled_defects(self) -> Dataset:
        """The defect entries to learn from: an MVTec root's labeled/ split (its test defects when it has none),
        any other layout's defects."""
        ds = self
        if self.format == "mvtec":
            ds = self.select(split="labeled") if "labeled" in self.splits else self.select(split="test")
        return ds.select(normal=False)

    def load(self, entry: Entry) -> Sample:
        image = read_image(entry.image_path)
        h, w = image.shape[:2]
        if entry.expected_size is not None and tuple(entry.expected_size) != (h, w):
            eh, ew = entry.expected_size
            raise DefectgenError(
                entry.annotation_file or entry.image_path,
                f"says {entry.image_path.name} is {ew}x{eh} but the file is {w}x{h}",
            )
        mask = None
        if entry.mask_path is not None:
            mask = read_mask(entry.mask_path, (h, w), entry.image_path)
        if entry.coco_segmentations:
            mask = np.zeros((h, w), dtype=bool)
            for seg, _ in entry.coco_segmentations:
                mask |= decode_segmentation(seg, h, w)
        for b in entry.boxes:
            if b.x0 < 0 or b.y0 < 0 or b.x1 > w + 0.5 or b.y1 > h + 0.5 or b.x1 <= b.x0 or b.y1 <= b.y0:
                raise DefectgenError(
                    entry.annotation_file or entry.image_path,
                    f"box [{b.x0:g}, {b.y0:g}, {b.x1:g}, {b.y1:g}] lies outside the {w}x{h} image "
                    f"{entry.image_path.name}",
                )
        boxes = list(entry.boxes)
        if entry.yolo is not None:
            yolo_boxes, yolo_mask = entry.yolo.at_size(h, w)
            boxes += yolo_boxes
            mask = yolo_mask if mask is None or yolo_mask is None else mask | yolo_mask
        if not boxes and mask is not None and mask.any():
            box = Box.from_mask(mask, entry.class_name)
            boxes = [box] if box else []
        return Sample(
            image=image, mask=mask, class_name=entry.class_name, boxes=boxes,
            path=entry.image_path, mask_path=entry.mask_path, split=entry.split, source=entry.source,
        )


def _images_under(folder: Path) -> list[Path]:
    return [p for p in image_files(folder) if not p.stem.endswith(MASK_SUFFIX)]


def _mask_for(image: Path) -> Path | None:
    for suffix in (".png", ".bmp", ".tif", ".tiff", ".jpg"):
        candidate = image.with_name(image.stem + MASK_SUFFIX + suffix)
        if candidate.exists():
            return candidate
    return None


def detect_format(root: Path) -> str:
    """Guess the layout of `root` from its structure (see the module docstring)."""
    if root.is_file():
        if root.suffix.lower() == ".json":
            return "coco"
        raise DefectgenError(root, "a file was given; expected a dataset folder or a COCO .json file")
    if (root / "annotations.json").is_file():
        return "coco"
    if (root / "train" / "good").is_dir() or ((root / "test").is_dir() and (root / "ground_truth").is_dir()):
        return "mvtec"
    if yolo.is_yolo_root(root):
        return "yolo"
    if _voc_parts(root):
        return "voc"
    if any(p.stem.endswith(MASK_SUFFIX) for p in image_files(root)):
        return "pairs"
    return "folder"


def read_parts(root: Path) -> list[Path]:
    """The folders under `root` that reading it walks (`io.output.check_outside_inputs`): MVTec's and VOC's named parts,
    else `root` itself."""
    root = Path(root).resolve()
    if not root.is_dir() or (root / "annotations.json").is_file():
        return [root]
    if (root / "train" / "good").is_dir() or ((root / "test").is_dir() and (root / "ground_truth").is_dir()):
        return [root / p for p in ("train", "test", "ground_truth", "labeled")]
    if yolo.is_yolo_root(root):
        folders = [folder for folder, _ in yolo.layout(root)[0]]
        return folders + [yolo.label_path(f / "x").parent for f in folders]
    voc = _voc_parts(root)
    if voc:
        return [p for images, annotations, _ in voc for p in (images, annotations)]
    return [root]


def open_dataset(path: str | Path, format: str = "auto", on_bad: str = "error") -> Dataset:
    """List the dataset at `path` (folder or COCO file). Raises DefectgenError naming the path if it is unusable."""
    root = Path(path)
    if not root.exists():
        raise DefectgenError(root, "no such file or folder")
    if format not in FORMATS:
        raise DefectgenError(root, f"unknown format {format!r}; choose from {', '.join(FORMATS)}")
    fmt = detect_format(root) if format == "auto" else format
    reader = {"folder": _read_folder, "mvtec": _read_mvtec, "pairs": _read_pairs, "voc": _read_voc, "coco": _read_coco,
              "yolo": _read_yolo}
    entries = reader[fmt](root)
    if not entries:
        raise DefectgenError(root, f"no images found (read as '{fmt}' layout)")
    return Dataset(root, fmt, entries, on_bad)


def _read_folder(root: Path) -> list[Entry]:
    return [Entry(p, class_name=NORMAL_CLASS) for p in _images_under(root)]


def _read_pairs(root: Path) -> list[Entry]:
    entries = []
    for p in _images_under(root):
        mask = _mask_for(p)
        entries.append(Entry(p, mask, class_name=p.parent.name if mask else NORMAL_CLASS))
    return entries


def _read_mvtec(root: Path) -> list[Entry]:
    entries = []
    train = root / "train"
    if train.is_dir():
        for cls_dir in sorted(d for d in train.iterdir() if d.is_dir()):
            entries += [Entry(p, class_name=cls_dir.name, split="train") for p in _images_under(cls_dir)]
    test = root / "test"
    if test.is_dir():
        for cls_dir in sorted(d for d in test.iterdir() if d.is_dir()):
            for p in _images_under(cls_dir):
                mask = None
                if cls_dir.name != NORMAL_CLASS:
                    mask = _mask_for(root / "ground_truth" / cls_dir.name / p.name)
                entries.append(Entry(p, mask, class_name=cls_dir.name, split="test"))
    labeled = root / "labeled"
    if labeled.is_dir():
        for e in _read_pairs(labeled):
            e.split = "labeled"
            entries.append(e)
    return entries


def _voc_parts(root: Path) -> list[tuple[Path, Path, str | None]]:
    """(images folder, annotations folder, split) for root itself or each of its split subfolders."""
    def pair(folder: Path) -> tuple[Path, Path] | None:
        ann = next((folder / n for n in ("annotations", "Annotations") if (folder / n).is_dir()), None)
        img = next((folder / n for n in ("images", "JPEGImages") if (folder / n).is_dir()), None)
        if ann is None or img is None or not any(ann.glob("*.xml")):
            return None
        return img, ann

    found = pair(root)
    if found:
        return [(found[0], found[1], None)]
    parts = []
    for sub in sorted(d for d in root.iterdir() if d.is_dir()):
        found = pair(sub)
        if found:
            parts.append((found[0], found[1], sub.name))
    return parts


def _voc_number(obj: ET.Element, tag: str, xml_path: Path) -> float:
    node = obj.find(f"bndbox/{tag}")
    try:
        return float(node.text)  # type: ignore[union-attr,arg-type]
    except (AttributeError, TypeError, ValueError):
        raise DefectgenError(xml_path, f"object has no numeric bndbox/{tag}") from None


def _read_voc(root: Path) -> list[Entry]:
    parts = _voc_parts(root)
    if not parts:
        raise DefectgenError(root, "not a Pascal VOC layout: expected images/ and annotations/*.xml")
    entries = []
    for images, xml_dir, split in parts:
        by_stem = {p.stem: p for p in _images_under(images)}
        for xml_path in sorted(xml_dir.glob("*.xml")):
            try:
                tree = ET.parse(xml_path).getroot()
            except ET.ParseError as e:
                raise DefectgenError(xml_path, f"not valid XML ({e})") from None
            filename = (tree.findtext("filename") or "").strip()
            image = images / filename if filename and (images / filename).is_file() else by_stem.get(xml_path.stem)
            if image is None:
                raise DefectgenError(xml_path, f"names image {filename or xml_path.stem!r}, not found in {images}")
            boxes = []
            for obj in tree.iter("object"):
                label = (obj.findtext("name") or "").strip() or None
                # VOC coordinates are 1-based and inclusive; Box is 0-based with exclusive ends.
                x0, y0 = _voc_number(obj, "xmin", xml_path) - 1, _voc_number(obj, "ymin", xml_path) - 1
                x1, y1 = _voc_number(obj, "xmax", xml_path), _voc_number(obj, "ymax", xml_path)
                boxes.append(Box(x0, y0, x1, y1, label))
            size = tree.find("size")
            expected = None
            if size is not None and size.findtext("width") and size.findtext("height"):
                expected = (int(float(size.findtext("height"))), int(float(size.findtext("width"))))
            cls = Counter(b.label for b in boxes).most_common(1)[0][0] if boxes else NORMAL_CLASS
            entries.append(Entry(image, class_name=cls, boxes=boxes, split=split,
                                 expected_size=expected, annotation_file=xml_path))
    return entries


def _source(recorded: str | None, base: Path) -> Path | None:
    """The normal a synthesized image was painted on, as recorded (absolute, or relative to where synthesize ran
    or to the set): only read, for display; None when it cannot be found."""
    if not recorded:
        return None
    for candidate in (Path(recorded), base / recorded):
        if candidate.is_file():
            return candidate
    return None


def _read_coco(root: Path) -> list[Entry]:
    json_path = root / "annotations.json" if root.is_dir() else root
    data = load_coco_json(json_path)
    base = json_path.parent
    categories = {c["id"]: c.get("name", str(c["id"])) for c in data["categories"]}
    anns_by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        anns_by_image.setdefault(ann["image_id"], []).append(ann)
    entries = []
    for im in data["images"]:
        name = im.get("file_name")
        if not name:
            raise DefectgenError(json_path, f"image id {im.get('id')} has no file_name")
        candidates = [base / name, base / "images" / name]
        image_path = next((c for c in candidates if c.is_file()), None)
        if image_path is None:
            raise DefectgenError(json_path, f"names image {name!r}, which does not exist under {base}")
        anns = anns_by_image.get(im["id"], [])
        h, w = im.get("height"), im.get("width")
        boxes, segs = [], []
        for ann in anns:
            label = categories[ann["category_id"]]
            if ann.get("bbox") is not None:
                bx, by, bw, bh = (float(v) for v in ann["bbox"])
                boxes.append(Box(bx, by, bx + bw, by + bh, label))
            if ann.get("segmentation"):
                segs.append((ann["segmentation"], label))
        cls = Counter(c for _, c in segs).most_common(1)[0][0] if segs else (
            Counter(b.label for b in boxes).most_common(1)[0][0] if boxes else NORMAL_CLASS)
        entries.append(Entry(
            image_path, class_name=cls, boxes=boxes, coco_segmentations=segs or None,
            expected_size=(int(h), int(w)) if h and w else None, annotation_file=json_path,
            split=im.get("split"), source=_source(im.get("source"), base),
        ))
    return entries


def _read_yolo(root: Path) -> list[Entry]:
    if not yolo.is_yolo_root(root):
        raise DefectgenError(root, "not a YOLO layout: expected data.yaml, or images/ beside labels/*.txt")
    parts, names = yolo.layout(root)
    entries = []
    for folder, split in parts:
        images = _images_under(folder) if split is not None else [p for p in _images_under(folder)
                                                                  if p.parent == folder]
        for image in images:
            labels = yolo.read_labels(yolo.label_path(image), names)
            entries.append(Entry(image, class_name=labels.majority() or NORMAL_CLASS, split=split,
                                 annotation_file=labels.path, yolo=labels))
    return entries

