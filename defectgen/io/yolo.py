"""YOLO label files both ways: the lines `defectgen export` writes and the reader of YOLO and YOLO-seg folders.

A label file holds one line per object, in fractions of the image's width and height (0 and 1 are its edges):
  box      `class cx cy w h`
  polygon  `class x1 y1 x2 y2 ...` (YOLO-seg)

Polygons are traced from the exact mask with cv2.findContours, one line per connected region (8-connectivity,
the rule `CocoBuilder` annotates by). Holes are bridged into the outer ring: the ring walks a zero-width cut from
its point nearest the hole, around the hole and back, so one line keeps the hole open under even-odd filling
(the way Ultralytics joins a COCO object of several parts into one line). A vertex is the centre of a boundary
pixel, written as (i + 0.5) / W with six decimals, so Ultralytics' own rasterization (cv2.fillPoly on the
truncated pixel coordinates) and `fill_polygons` here give back the traced pixels; a region of one or two pixels
repeats its points to make the three a polygon line needs. Read back, a polygon's pixels are those cv2.fillPoly
fills (its boundary included), and its box is their extent.

Boxes read back are snapped to whole pixels when they lie within 0.01 px of one (six decimals keep that for images
up to 20,000 px), so integer boxes come back exact.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml

from defectgen.errors import DefectgenError
from defectgen.io.sample import Box

SPLIT_KEYS = ("train", "val", "test")
_SNAP = 0.01


# ---- writing ------------------------------------------------------------------------------------------------------

def box_line(class_id: int, box: Box, height: int, width: int) -> str:
    cx, cy = (box.x0 + box.x1) / 2 / width, (box.y0 + box.y1) / 2 / height
    return f"{class_id} {cx:.6f} {cy:.6f} {box.width / width:.6f} {box.height / height:.6f}"


def polygon_line(class_id: int, polygon: np.ndarray, height: int, width: int) -> str:
    """A polygon of pixel indices (N x 2, x then y) as a YOLO-seg line of pixel centres."""
    points = np.asarray(polygon, np.float64).reshape(-1, 2)
    if len(points) < 3:
        points = np.concatenate([points, points, points])[:3]
    fractions = (points + 0.5) / [width, height]
    return f"{class_id} " + " ".join(f"{v:.6f}" for v in fractions.ravel())


def mask_polygons(mask: np.ndarray) -> list[np.ndarray]:
    """One polygon (N x 2 pixel indices, x then y) per connected region of `mask`, holes bridged into its ring."""
    contours, hierarchy = cv2.findContours(np.ascontiguousarray(mask, dtype=np.uint8), cv2.RETR_CCOMP,
                                           cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    links = hierarchy[0]  # per contour: next, previous, first child, parent
    polygons = []
    for i, contour in enumerate(contours):
        if links[i][3] != -1:
            continue  # a hole: bridged into its outer ring below
        ring = contour[:, 0, :]
        hole = links[i][2]
        while hole != -1:
            ring = _bridge(ring, contours[hole][:, 0, :])
            hole = links[hole][0]
        polygons.append(ring)
    return polygons


def _bridge(ring: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """`ring` with `hole` spliced in through a cut between their nearest points."""
    a, b = _nearest_pair(ring, hole)
    hole = np.roll(hole, -b, axis=0)
    return np.concatenate([ring[:a + 1], hole, hole[:1], ring[a:]])


def _nearest_pair(ring: np.ndarray, hole: np.ndarray) -> tuple[int, int]:
    """Indices of the closest point pair, in chunks of the hole so that long contours stay small in memory."""
    ring64 = ring.astype(np.int64)
    best, pair = None, (0, 0)
    step = max(1, (1 << 22) // len(ring))
    for start in range(0, len(hole), step):
        d = ((ring64[:, None, :] - hole[None, start:start + step, :].astype(np.int64)) ** 2).sum(-1)
        k = int(np.argmin(d))
        if best is None or d.flat[k] < best:
            best, pair = d.flat[k], (k // d.shape[1], start + k % d.shape[1])
    return pair


def fill_polygons(polygons: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """The bool mask cv2.fillPoly paints for polygons of pixel indices (each filled on its own, then united)."""
    mask = np.zeros((height, width), np.uint8)
    for polygon in polygons:
        cv2.fillPoly(mask, [np.asarray(polygon, np.int32).reshape(-1, 1, 2)], 1)
    return mask.astype(bool)


# ---- reading ------------------------------------------------------------------------------------------------------

@dataclass
class YoloLabels:
    """One label file as read: (class name, 'box' or 'polygon', values in fractions) per line; scaled to pixels
    by `at_size` once the image's size is known."""

    path: Path
    lines: list[tuple[str, str, np.ndarray]] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return [name for name, _, _ in self.lines]

    def majority(self) -> str | None:
        return Counter(self.classes).most_common(1)[0][0] if self.lines else None

    def at_size(self, height: int, width: int) -> tuple[list[Box], np.ndarray | None]:
        """Boxes in pixels (a polygon's: its pixels' extent) and, when any line is a polygon, the mask of every
        line (box lines painted as rectangles)."""
        boxes, polygons = [], []
        for name, kind, values in self.lines:
            if kind == "box":
                boxes.append(_box(values, height, width, name))
                continue
            points = np.floor(values.reshape(-1, 2) * [width, height]).astype(np.int64)
            points = np.clip(points, 0, [width - 1, height - 1])
            polygons.append(points)
            boxes.append(Box(int(points[:, 0].min()), int(points[:, 1].min()), int(points[:, 0].max()) + 1,
                             int(points[:, 1].max()) + 1, name))
        if not polygons:
            return boxes, None
        mask = fill_polygons(polygons, height, width)
        for (_, kind, _), b in zip(self.lines, boxes, strict=True):
            if kind == "box":
                mask[int(b.y0):int(np.ceil(b.y1)), int(b.x0):int(np.ceil(b.x1))] = True
        return boxes, mask


def _snap(value: float) -> float:
    nearest = round(value)
    return float(nearest) if abs(value - nearest) < _SNAP else value


def _box(values: np.ndarray, height: int, width: int, name: str) -> Box:
    cx, cy, w, h = (float(v) for v in values)
    x0, x1 = (_snap(min(max(v, 0.0), 1.0) * width) for v in (cx - w / 2, cx + w / 2))
    y0, y1 = (_snap(min(max(v, 0.0), 1.0) * height) for v in (cy - h / 2, cy + h / 2))
    return Box(x0, y0, x1, y1, name)


def read_labels(path: Path, names: dict[int, str] | None) -> YoloLabels:
    """Parse a label file (`names`: class id -> name; None: each id names itself); a missing file is an image
    without objects (a background image, as YOLO has it)."""
    labels = YoloLabels(path)
    if not path.is_file():
        return labels
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DefectgenError(path, f"cannot read label file ({e})") from None
    for number, line in enumerate(text.splitlines(), 1):
        tokens = line.split()
        if tokens:
            labels.lines.append(_parse_line(tokens, names, path, number))
    return labels


def _parse_line(tokens: list[str], names: dict[int, str] | None, path: Path,
                number: int) -> tuple[str, str, np.ndarray]:
    try:
        class_id, values = int(float(tokens[0])), np.array([float(t) for t in tokens[1:]], np.float64)
    except ValueError:
        raise DefectgenError(path, f"line {number}: expected numbers, got {' '.join(tokens)[:60]!r}") from None
    if len(tokens) != 5 and (len(tokens) < 3 or len(tokens) % 2 == 0):
        raise DefectgenError(path, f"line {number}: {len(tokens)} values; expected 'class cx cy w h' or 'class "
                             "x1 y1 x2 y2 ...'")
    if class_id < 0 or (names is not None and class_id not in names):
        known = "" if names is None else f" among the {len(names)} class names"
        raise DefectgenError(path, f"line {number}: class {class_id} is not a class id{known}")
    if values.min() < -0.01 or values.max() > 1.01:
        raise DefectgenError(path, f"line {number}: coordinates must be fractions of the image (0 to 1)")
    name = str(class_id) if names is None else names[class_id]
    return name, "box" if len(tokens) == 5 else "polygon", values


def label_path(image: Path) -> Path:
    """Where YOLO keeps an image's labels: its path with the last `images` folder replaced by `labels` and the
    suffix by .txt (beside the image when no folder is called `images`)."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


# ---- layout -------------------------------------------------------------------------------------------------------

DATA_YAML = "data.yaml"


def is_yolo_root(root: Path) -> bool:
    """A `data.yaml` naming `train` and the classes, or `images/` beside a `labels/` that holds .txt files."""
    if (root / DATA_YAML).is_file():
        try:
            data = yaml.safe_load((root / DATA_YAML).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return False
        return isinstance(data, dict) and "train" in data and ("names" in data or "nc" in data)
    labels = root / "labels"
    return (root / "images").is_dir() and labels.is_dir() and next(labels.rglob("*.txt"), None) is not None


def layout(root: Path) -> tuple[list[tuple[Path, str | None]], dict[int, str] | None]:
    """(image folder, split) pairs and the class names (None: not given, ids serve) of a YOLO root."""
    if (root / DATA_YAML).is_file():
        return _from_yaml(root / DATA_YAML)
    images = root / "images"
    subs = sorted(d for d in images.iterdir() if d.is_dir())
    parts: list[tuple[Path, str | None]] = [(d, d.name) for d in subs]
    if any(p.is_file() for p in images.iterdir()):
        parts.append((images, None))
    names = next((_names_file(f) for f in (root / "classes.txt", root / "labels" / "classes.txt") if f.is_file()),
                 None)
    return parts, names


def _names_file(path: Path) -> dict[int, str]:
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return dict(enumerate(line for line in lines if line))


def _from_yaml(path: Path) -> tuple[list[tuple[Path, str | None]], dict[int, str] | None]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DefectgenError(path, f"not a readable YAML file ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise DefectgenError(path, "expected a mapping with train, val and names")
    base = _base(path.parent, data.get("path"))
    parts: list[tuple[Path, str | None]] = []
    for split in SPLIT_KEYS:
        values = data.get(split) or []
        for value in [values] if isinstance(values, str) else values:
            folder = base / str(value)
            if not folder.is_dir():
                raise DefectgenError(path, f"{split}: {value} is not a folder under {base} (lists of images in "
                                     ".txt files are not read)")
            if all(folder.resolve() != p.resolve() for p, _ in parts):
                parts.append((folder, split))
    names = data.get("names")
    if isinstance(names, list):
        names = dict(enumerate(names))
    if names is not None and not isinstance(names, dict):
        raise DefectgenError(path, "names: expected a list or a mapping of class id to name")
    return parts, None if names is None else {int(k): str(v) for k, v in names.items()}


def _base(yaml_dir: Path, recorded: object) -> Path:
    """The folder the split paths are relative to: `path` when it names an existing folder (absolute, or relative
    to the YAML's folder), else the folder holding the YAML (where a moved or copied export now lies)."""
    if recorded:
        candidate = Path(str(recorded))
        candidate = candidate if candidate.is_absolute() else yaml_dir / candidate
        if candidate.is_dir():
            return candidate
    return yaml_dir
