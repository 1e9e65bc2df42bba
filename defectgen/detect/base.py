"""One detector interface and a registry (as anomalib has), so `validate` and users handle every detector alike.

A detector is built from a backbone and `DetectorOptions` (`from_options`), trained once with `fit` on normal
images and, optionally, defect images with masks, scores images with `predict` (anomaly maps and image scores),
and round-trips through one safetensors file with `save` / `load` (`load_detector` reads any of them).

    from defectgen.detect import get_detector, load_backbone
    det = get_detector("seg").from_options(load_backbone("tiny"), DetectorOptions(steps=200))
    det.fit(normals, defects, masks)
    maps, scores = det.predict(test_images)
    det.save("seg.safetensors"); load_detector("seg.safetensors").predict(test_images)
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch

from defectgen.errors import DefectgenError

DETECTORS: dict[str, type[Detector]] = {}
_BUILTIN = ("defectgen.detect.ast", "defectgen.detect.det", "defectgen.detect.exdd", "defectgen.detect.seg")

T = TypeVar("T", bound="type[Detector]")


@dataclass
class DetectorOptions:
    """What `validate` (or a user) can set; each detector reads the fields named in its `options`.
    width: AST student / seg decoder width (None: the detector's default for the backbone)."""

    seed: int = 0
    sigma: float = 4.0
    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-3
    coreset_ratio: float = 0.1
    positive_quantile: float | None = None
    width: int | None = None
    epochs: int = 50      # detectors trained by epochs (det): the cap
    patience: int = 5     # ... and the epochs without a validation gain that stop them early
    box_head: str = "fcos"  # det: fcos, retinanet or faster-rcnn (torchvision's models on the same pyramid)


class Detector(ABC):
    """name: registry key; options: the `DetectorOptions` fields it uses (recorded in reports);
    supervised: learns from defects only (no unsupervised fallback); produces_boxes: has `predict_with_boxes`;
    box_detector: boxes are what it is for, so box mAP scores it on any test set with boxes (not only on a
    multi-class one)."""

    name: ClassVar[str] = ""
    options: ClassVar[tuple[str, ...]] = ()
    supervised: ClassVar[bool] = False
    produces_boxes: ClassVar[bool] = False
    box_detector: ClassVar[bool] = False
    needs_cleans: ClassVar[bool] = False  # learns from (defect, clean image) pairs: real defects get inpainted ones

    @classmethod
    @abstractmethod
    def from_options(cls, backbone, options: DetectorOptions) -> Detector:
        """A fresh, untrained detector on `backbone`."""

    @abstractmethod
    def fit(self, normals: np.ndarray, defects: np.ndarray | None = None, masks: np.ndarray | None = None,
            progress: bool = False, *, cleans: np.ndarray | None = None, labels: np.ndarray | None = None,
            class_names: Sequence[str] = (), desc: str | None = None) -> Detector:
        """normals: N x H x W x C uint8. defects, masks (bool): defect images and their masks. cleans: the
        normals the defects were painted on (None for real defects). labels: n x H x W ints, 0 outside the
        masks and 1 + an index into `class_names` inside (per-pixel classes for detectors that name them)."""

    @abstractmethod
    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(maps N x H x W float32, image scores N)."""

    def image_scores(self, maps: Sequence[np.ndarray]) -> np.ndarray:
        """Image scores from anomaly maps (of any sizes), by the rule `predict` uses: here each map's maximum."""
        return np.asarray([float(np.max(m)) for m in maps], np.float32)

    def predict_with_boxes(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[list[dict]]]:
        """Maps, scores and per image a list of {"bbox": [x, y, w, h], "score", "class"}."""
        raise NotImplementedError(f"{self.name} does not output boxes")

    def summary(self) -> dict[str, Any]:
        """Training figures for the report (bank sizes, losses, ...)."""
        return {}

    @abstractmethod
    def save(self, path: str | Path) -> None: ...

    @classmethod
    @abstractmethod
    def load(cls, path: str | Path, backbone=None) -> Detector: ...


def register_detector(name: str) -> Callable[[T], T]:
    """Class decorator: make a `Detector` available under `name` (validate --detector, load_detector)."""

    def deco(cls: T) -> T:
        cls.name = name
        DETECTORS[name] = cls
        return cls

    return deco


def _builtin() -> None:
    import importlib

    for module in _BUILTIN:
        importlib.import_module(module)


def detector_names() -> list[str]:
    _builtin()
    return sorted(DETECTORS)


def get_detector(name: str) -> type[Detector]:
    _builtin()
    if name not in DETECTORS:
        raise DefectgenError(None, f"unknown detector {name!r}; choose from {', '.join(sorted(DETECTORS))}")
    return DETECTORS[name]


def load_detector(path: str | Path, backbone=None) -> Detector:
    """Any detector saved by `save`: the file's metadata names which."""
    _, meta = read_weights(path, None)
    return get_detector(meta["detector"]).load(path, backbone)


def write_weights(path: str | Path, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    """Tensors plus the detector's configuration (JSON in the metadata) as one safetensors file, atomically."""
    from safetensors.torch import save

    from defectgen.io.files import atomic_write_bytes

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                metadata={"defectgen": json.dumps(config)})
    atomic_write_bytes(path, data)


def read_weights(path: str | Path, detector: str | None, what: str = "detector weights file"
                 ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, config) of a file `write_weights` wrote for `detector` (None: any registered detector)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("defectgen", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
    except (OSError, ValueError, SafetensorError) as e:
        raise DefectgenError(path, f"not {_article(what)} ({e})") from None
    kind = meta.get("detector") if isinstance(meta, dict) else None
    if kind is None or (detector is not None and kind != detector):
        raise DefectgenError(path, f"not {_article(what)} (no {detector or 'detector'!r} metadata)")
    return tensors, meta


def _article(what: str) -> str:
    return ("an " if what[:1].lower() in "aeiou" else "a ") + what

