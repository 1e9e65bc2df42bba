"""COCO annotations on pycocotools: a writer that encodes masks as RLE, and a reader that checks what it is told."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from defectgen.errors import DefectgenError
from defectgen.io.files import atomic_write_json
from defectgen.io.sample import Sample


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """A bool H x W mask as COCO compressed RLE with a JSON-safe `counts` string."""
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Polygons, uncompressed RLE or compressed RLE -> bool H x W mask."""
    if isinstance(segmentation, list):
        rles = mask_utils.frPyObjects(segmentation, height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    return mask_utils.decode(rle).astype(bool)


def regions(mask: np.ndarray) -> list[np.ndarray]:
    """The connected regions (8-connectivity) of a bool mask, each as a bool mask of the same size."""
    count, labels = cv2.connectedComponents(np.asarray(mask, dtype=np.uint8), connectivity=8)
    return [labels == k for k in range(1, count)]


class CocoBuilder:
    """Collects samples and writes one COCO file, under one rule for every writer (masks, synthesize, filter):

    - `add(sample)` adds the sample's image and one annotation per connected region (8-connectivity) of its defect
      mask: RLE segmentation, the region's bbox and area, iscrowd 0, the sample's class (or "defect").
    - Image ids and annotation ids start at 1. Annotation ids follow the image ids (then the regions' order), so
      the file is the same whatever order the samples were added in (a resumed run writes what a fresh one does).
    - Category ids start at 1: the names given to the constructor first, then the others in the order they first
      appear in image-id order.
    """

    def __init__(self, categories: list[str] | None = None, supercategory: str = "defect",
                 root: str | Path | None = None, default_category: str = "defect"):
        self.supercategory = supercategory
        self.root = Path(root) if root is not None else None  # file names are written relative to it
        self.default_category = default_category
        self._given = list(dict.fromkeys(categories or []))
        self._images: dict[int, dict[str, Any]] = {}
        self._regions: dict[int, list[tuple[str, dict[str, Any]]]] = {}

    def _relative(self, path: Path | None) -> str | None:
        if path is None:
            return None
        if self.root is not None:
            try:
                return Path(path).relative_to(self.root).as_posix()
            except ValueError:
                pass
        return Path(path).as_posix()

    def add(self, sample: Sample, file_name: str | None = None, *, image_id: int | None = None,
            **extra: Any) -> int:
        """Add `sample`'s image (file_name: given, else sample.path relative to the builder's root) with its
        mask_file (sample.mask_path), source and seed when the sample has them, plus `extra`, and annotate every
        connected region of its defect mask. Returns the image id."""
        name = file_name if file_name is not None else self._relative(sample.path)
        if name is None:
            raise ValueError("the sample has no path; give file_name")
        record: dict[str, Any] = {}
        if sample.mask_path is not None:
            record["mask_file"] = self._relative(sample.mask_path)
        if sample.source is not None:
            record["source"] = str(sample.source)
        if sample.seed is not None:
            record["seed"] = int(sample.seed)
        image_id = self.add_image(name, sample.height, sample.width, image_id, **record, **extra)
        if not sample.is_normal:
            self._annotate(image_id, sample.defect_mask(), sample.class_name or self.default_category)
        return image_id

    def add_image(self, file_name: str, height: int, width: int, image_id: int | None = None, **extra: Any) -> int:
        """An image entry without annotations (`add` calls it; so may a test building a file by hand)."""
        image_id = max(self._images, default=0) + 1 if image_id is None else int(image_id)
        if image_id < 1 or image_id in self._images:
            raise ValueError(f"image id {image_id} is taken or below 1")
        record = {"id": image_id, "file_name": file_name, "height": int(height), "width": int(width)}
        self._images[image_id] = {**record, **extra}
        self._regions[image_id] = []
        return image_id

    def add_mask(self, image_id: int, mask: np.ndarray, category: str, **extra: Any) -> int | None:
        """Annotate `mask` on an added image under the same rule as `add` (one annotation per connected region).
        Returns the number of annotations added, or None for an empty mask."""
        return self._annotate(image_id, mask, category, **extra) or None

    def _annotate(self, image_id: int, mask: np.ndarray, category: str, **extra: Any) -> int:
        parts = regions(mask)
        for part in parts:
            rle = encode_rle(part)
            compressed = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
            self._regions[int(image_id)].append((category, {
                "segmentation": rle,
                "area": int(mask_utils.area(compressed)),
                "bbox": [float(v) for v in mask_utils.toBbox(compressed)],
                "iscrowd": 0,
                **extra,
            }))
        return len(parts)

    @property
    def images(self) -> list[dict[str, Any]]:
        return [self._images[k] for k in sorted(self._images)]

    def _numbered(self) -> tuple[dict[str, int], list[dict[str, Any]]]:
        categories = {name: k + 1 for k, name in enumerate(self._given)}
        annotations = []
        for image_id in sorted(self._images):
            for name, ann in self._regions[image_id]:
                categories.setdefault(name, len(categories) + 1)
                annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                    "category_id": categories[name], **ann})
        return categories, annotations

    @property
    def annotations(self) -> list[dict[str, Any]]:
        return self._numbered()[1]

    @property
    def categories(self) -> dict[str, int]:
        return self._numbered()[0]

    def to_dict(self, info: dict[str, Any] | None = None) -> dict[str, Any]:
        from defectgen import __version__

        base_info = {
            "description": "generated by defectgen",
            "version": __version__,
            "date_created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        categories, annotations = self._numbered()
        return {
            "info": {**base_info, **(info or {})},
            "licenses": [],
            "images": self.images,
            "annotations": annotations,
            "categories": [
                {"id": cid, "name": name, "supercategory": self.supercategory} for name, cid in categories.items()
            ],
        }

    def save(self, path: str | Path, info: dict[str, Any] | None = None) -> None:
        atomic_write_json(path, self.to_dict(info))


def load_coco_json(path: str | Path) -> dict[str, Any]:
    """Read a COCO file and check its structure (not yet its images; the dataset reader does that)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DefectgenError(path, "file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DefectgenError(path, f"not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DefectgenError(path, "not a COCO file: no 'images' list")
    data.setdefault("annotations", [])
    data.setdefault("categories", [])
    ids = [im.get("id") for im in data["images"]]
    if len(set(ids)) != len(ids):
        raise DefectgenError(path, "duplicate image ids")
    known_images = set(ids)
    known_cats = {c.get("id") for c in data["categories"]}
    for ann in data["annotations"]:
        if ann.get("image_id") not in known_images:
            raise DefectgenError(path, f"annotation {ann.get('id')} refers to unknown image id {ann.get('image_id')}")
        if ann.get("category_id") not in known_cats:
            raise DefectgenError(
                path, f"annotation {ann.get('id')} refers to unknown category id {ann.get('category_id')}"
            )
    return data
