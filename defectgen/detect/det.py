"""det: a box detector for box datasets (NEU-DET, VOC, COCO boxes): torchvision's FCOS on the frozen project backbone
through a feature pyramid (torchvision.ops.FeaturePyramidNetwork over strides 8, 16, 32; no P6: the last level
takes every large box, and small images keep at least 2x2 cells on it).

Why FCOS by default: anchor-free (one point per location, no anchor shapes to tune per dataset), one stage, focal
loss and GIoU from torchvision; its scale assignment follows the pyramid's strides. `box_head` puts RetinaNet or
Faster R-CNN on the same pyramid instead; `benchmarks/det_neu.py --box-head fcos,retinanet,faster-rcnn` compares
them: at 40% of NEU-DET's labels and one seed FCOS and RetinaNet were level, and Faster R-CNN 11x slower an epoch
(benchmarks/README.md).

Training runs by epochs with early stopping: a validation split carved from the training defects (never the test
set) is scored with COCO mAP@0.5 after every epoch (a pass over the training images, and at least
`convergence.MIN_STEPS_PER_EPOCH` steps), the best weights are kept, and training stops when `patience`
epochs bring no gain, or at the `epochs` cap. The backbone is frozen, so its maps are computed once per image and
flip variant (`flips`: none, horizontal, vertical and both by default) before the first epoch and cached (half
precision, on the CPU); the epochs train only the pyramid and the head, and validation reads the cache too. On the
toy box set of the tests, two flip variants instead of four gave mAP@0.5 0.39 instead of 0.71.
`summary()` says how many epochs ran and why training stopped.

Boxes of the training defects come from `fit(boxes=...)` (the layout's own boxes) or, without them, from the
connected components of each class in the label maps (masks of generated defects).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from defectgen.detect.backbone import TINY, Backbone, backbone_of, backbone_record
from defectgen.detect.base import Detector, DetectorOptions, read_weights, register_detector, write_weights
from defectgen.detect.convergence import (
    FLIPS,
    EarlyStopping,
    MapCache,
    Shuffled,
    backbone_identity,
    steps_per_epoch,
    stored_maps_of,
    train_by_epochs,
    validation_split,
)
from defectgen.detect.features import batches, to_tensor
from defectgen.errors import DefectgenError

_PAD = 32  # the detection transform pads every batch to a multiple of this
# The learning rate rises linearly from 0.1% over the first steps (as torchvision's and Detectron2's detection
# recipes do): at full rate from the start, AdamW's first steps pushed most of FCOS's box-regression outputs under
# its ReLU, and whether training escaped that depended on rounding (NEU-DET, all labels: mAP@0.5 0.60 on one
# machine, 0.09 on another, same code and seed).
WARMUP_STEPS = 200
REGRESSION_BIAS = 1.0  # FCOS: see _fcos


class _Pyramid(nn.Module):
    """The frozen backbone's maps at `strides` -> an FPN of `width` channels (what torchvision's detection models
    take as `backbone`). `cached`, when set, replaces the backbone's maps for the next call."""

    def __init__(self, body: Backbone, strides: Sequence[int], width: int):
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork

        self.body = body
        self.strides = tuple(int(s) for s in strides)
        self.fpn = FeaturePyramidNetwork(body.channels(self.strides), width)
        self.out_channels = width
        self.cached: list[torch.Tensor] | None = None

    def body_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            return self.body(x, self.strides)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        maps = self.cached if self.cached is not None else self.body_maps(x)
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))


def _fcos(pyramid: _Pyramid, strides: Sequence[int], score_thresh: float, common: dict) -> nn.Module:
    """Anchor-free: one point per cell of each level, its size the level's stride."""
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    anchors = AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))
    model = FCOS(pyramid, anchor_generator=anchors, score_thresh=score_thresh, detections_per_img=100, **common)
    # torchvision's box regression is ReLU(conv) with a zero bias: half its outputs start at 0, where ReLU passes no
    # gradient, and a few large early steps can push all of them there for good (NEU-DET, all labels: mAP 0.000 at
    # one seed of three, loss stuck at 1.93). A positive bias starts every cell on a box one stride from its
    # centre on each side, inside ReLU's live range.
    nn.init.constant_(model.head.regression_head.bbox_reg.bias, REGRESSION_BIAS)
    return model


def _anchors(strides: Sequence[int]):
    """Three sizes (4, 5 and 6.3 strides: RetinaNet's octave scales) and three aspect ratios per level."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    sizes = tuple(tuple(float(4 * s * 2 ** (k / 3)) for k in range(3)) for s in strides)
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(strides))


def _retinanet(pyramid: _Pyramid, strides: Sequence[int], score_thresh: float, common: dict) -> nn.Module:
    """One stage on anchors, focal loss."""
    from torchvision.models.detection import RetinaNet

    return RetinaNet(pyramid, anchor_generator=_anchors(strides), score_thresh=score_thresh, detections_per_img=100,
                     **common)


def _faster_rcnn(pyramid: _Pyramid, strides: Sequence[int], score_thresh: float, common: dict) -> nn.Module:
    """Two stages: region proposals on anchors, then RoIAlign over every pyramid level and a box head."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.ops import MultiScaleRoIAlign

    pool = MultiScaleRoIAlign([str(i) for i in range(len(strides))], output_size=7, sampling_ratio=2)
    return FasterRCNN(pyramid, rpn_anchor_generator=_anchors(strides), box_roi_pool=pool,
                      box_score_thresh=score_thresh, box_detections_per_img=100, **common)


BOX_HEADS = {"fcos": _fcos, "retinanet": _retinanet, "faster-rcnn": _faster_rcnn}


def boxes_from_labels(labels: np.ndarray, n_classes: int) -> list[tuple[float, float, float, float, int]]:
    """(x0, y0, x1, y1, class index) of each connected region of each class in a label map (0 = background,
    1 + class index inside defects)."""
    out = []
    for c in range(n_classes):
        n, _, stats, _ = cv2.connectedComponentsWithStats((labels == c + 1).astype(np.uint8), connectivity=8)
        for i in range(1, n):
            x, y, w, h = (float(v) for v in stats[i, :4])
            out.append((x, y, x + w, y + h, c))
    return out


def _flip_boxes(boxes: torch.Tensor, dims: tuple[int, ...], h: int, w: int) -> torch.Tensor:
    boxes = boxes.clone()
    if -1 in dims:
        boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
    if -2 in dims:
        boxes[:, [1, 3]] = h - boxes[:, [3, 1]]
    return boxes


def _padded(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % _PAD, 0, (-h) % _PAD))


@register_detector("det")
class Det(nn.Module, Detector):
    """backbone: frozen feature extractor; strides: its levels under the pyramid; width: pyramid and head
    channels; class_names: set by `fit`; size: (H, W) of the model input, set by `fit`; score_thresh: boxes
    below it are dropped."""

    options = ("seed", "batch_size", "lr", "width", "epochs", "patience", "box_head")
    supervised = True
    produces_boxes = True
    box_detector = True

    def __init__(self, backbone: Backbone, strides: Sequence[int] = (8, 16, 32), width: int = 64,
                 class_names: Sequence[str] = (), size: Sequence[int] = (256, 256), score_thresh: float = 0.05,
                 flips: int = 4, head: str = "fcos"):
        super().__init__()
        if head not in BOX_HEADS:
            raise DefectgenError(None, f"unknown box head {head!r}: choose one of {', '.join(BOX_HEADS)}")
        self.head = head
        self.backbone = backbone
        self.strides = tuple(int(s) for s in strides)
        self.width, self.score_thresh = int(width), float(score_thresh)
        if not 1 <= flips <= len(FLIPS):
            raise ValueError(f"flips must lie in 1..{len(FLIPS)}")
        self.flips = int(flips)  # the flip variants trained on: each image's backbone maps are cached this often
        self.pyramid = _Pyramid(backbone, self.strides, self.width)
        self.class_names: list[str] = []
        self.size = (int(size[0]), int(size[1]))
        self.model: nn.Module | None = None
        self._build(class_names or ["defect"], self.size)
        self.train_options = DetectorOptions()
        self.report: dict[str, Any] = {}
        self.to(backbone.mean.device)

    def _build(self, class_names: Sequence[str], size: tuple[int, int]) -> None:
        self.class_names, self.size = [str(c) for c in class_names], (int(size[0]), int(size[1]))
        # images arrive in [0, 1] at the model size: no resize, and the backbone normalises them itself
        common = {"num_classes": len(self.class_names) + 1, "min_size": min(self.size), "max_size": max(self.size),
                  "image_mean": [0.0, 0.0, 0.0], "image_std": [1.0, 1.0, 1.0]}
        self.model = BOX_HEADS[self.head](self.pyramid, self.strides, self.score_thresh, common)
        self.model.to(self.backbone.mean.device)

    @property
    def device(self) -> torch.device:
        return self.backbone.mean.device

    @classmethod
    def from_options(cls, backbone: Backbone, options: DetectorOptions) -> Det:
        torch.manual_seed(options.seed)
        model = cls(backbone, width=options.width or (32 if backbone.name == TINY else 64), head=options.box_head)
        model.train_options = options
        return model

    # ---- training -----------------------------------------------------------------------------------------------

    def _targets(self, defects, masks, labels, class_names, boxes) -> tuple[list[str], list[np.ndarray]]:
        """(class names, per defect image an n x 5 array of x0, y0, x1, y1, class index): an image's `boxes`
        where given, else the regions of each class in its label map (or its mask). No box at all is an error."""
        if defects is None or len(defects) == 0:
            raise DefectgenError(None, "det is supervised and got no defect images with boxes to learn from "
                                 "(give a labeled set with boxes or masks, or a synthetic set)")
        names = (list(class_names) or sorted({str(b["class"]) for bs in boxes or [] if bs for b in bs})
                 or ["defect"])
        if labels is None and masks is not None:  # a mask's regions are of the first class
            labels = np.asarray(masks, bool).astype(np.int64)
        index = {c: i for i, c in enumerate(names)}
        out = []
        for i in range(len(defects)):
            given = boxes[i] if boxes is not None else None
            if given is not None:
                out.append(np.array([[*b["bbox"][:2], b["bbox"][0] + b["bbox"][2], b["bbox"][1] + b["bbox"][3],
                                      index[str(b["class"])]] for b in given], np.float32).reshape(-1, 5))
            elif labels is not None:
                out.append(np.array(boxes_from_labels(np.asarray(labels[i]), len(names)), np.float32).reshape(-1, 5))
            else:
                out.append(np.zeros((0, 5), np.float32))
        if not any(len(t) for t in out):
            raise DefectgenError(None, "det got defect images but no boxes in them (every mask is empty)")
        return names, out

    def fit(self, normals: np.ndarray, defects: np.ndarray | None = None, masks: np.ndarray | None = None,
            progress: bool = False, *, cleans: np.ndarray | None = None, labels: np.ndarray | None = None,
            class_names: Sequence[str] = (), desc: str | None = None,
            boxes: Sequence[Sequence[dict]] | None = None) -> Det:
        """Train on the defect images' boxes (`boxes`: per image a list of {"bbox": [x, y, w, h], "class"}, or None
        for an image whose label map's (or mask's) regions serve), normals as images without boxes, by epochs with
        early stopping on a validation split of the defects (see the module docstring)."""
        from defectgen.progress import bar

        names, targets = self._targets(defects, masks, labels, class_names, boxes)
        o = self.train_options
        torch.manual_seed(o.seed)
        rng = np.random.default_rng(o.seed)
        h, w = defects.shape[1:3]
        self._build(names, (h, w))
        images = list(defects) + list(normals)
        targets = targets + [np.zeros((0, 5), np.float32)] * len(normals)
        train, val = validation_split(len(defects), o.seed)
        train += list(range(len(defects), len(images)))  # normals: images without boxes, never validated
        cache = MapCache(self.pyramid.body_maps, images, self.device, prepare=_padded,
                         identity=self._identity())
        cache.fill([(i, f) for i in train for f in range(self.flips)] + [(i, 0) for i in val],
                   max(o.batch_size, 16), progress, f"{desc or 'det'}: backbone maps")
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt, warmup = _optimizer(params, o.lr)
        drawn = Shuffled(train, rng)

        def step() -> float:
            self.model.train()
            keys = [(i, int(rng.integers(self.flips))) for i in drawn.draw(o.batch_size)]
            batch, tgts = [], []
            for i, f in keys:
                t = torch.from_numpy(targets[i])
                batch.append(_as_rgb(cache.image(i, f)).to(self.device))
                tgts.append({"boxes": _flip_boxes(t[:, :4], FLIPS[f], h, w).to(self.device),
                             "labels": (t[:, 4].long() + 1).to(self.device)})
            self.pyramid.cached = cache.maps(keys)
            loss = sum(self.model(batch, tgts).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            warmup.step()
            self.pyramid.cached = None
            return float(loss.detach())

        def shown_epoch(loss: float, score: float | None) -> None:
            shown.set_postfix(loss=f"{loss:.3f}", val_map50="-" if score is None else f"{score:.3f}", refresh=False)
            shown.update(1)

        stop = EarlyStopping(o.patience)
        shown = bar(total=o.epochs, desc=desc or "det", unit="epoch", disable=not progress)
        train_by_epochs(step, steps_per_epoch(len(train), o.batch_size), stop,
                        lambda: self._val_map(cache, images, val, [targets[i] for i in val]) if val else None,
                        self._trained_state, max_epochs=o.epochs, on_epoch=shown_epoch)
        shown.close()
        stop.restore(self)
        self.model.eval()
        self.report = {**stop.report(len(val), len(train), "COCO mAP@0.5"), "classes": list(self.class_names),
                       "defect_images": int(len(defects))}
        return self

    def _identity(self) -> str:
        return backbone_identity(self.backbone, self.strides, f"padded to {_PAD}")

    def _trained_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not _is_backbone_key(k)}

    def _val_map(self, cache: MapCache, images: list[np.ndarray], val: list[int], targets: list[np.ndarray]
                 ) -> float:
        """COCO mAP@0.5 of the validation images, scored from their cached backbone maps."""
        from defectgen.metrics import coco_map

        found = self._detect(np.stack([images[i] for i in val]), 8, lambda sl: cache.maps([(i, 0) for i in val[sl]]))
        truth = [[{"bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "class": self.class_names[int(c)]}
                  for x0, y0, x1, y1, c in t] for t in targets]
        return float(coco_map(truth, found, self.class_names)["map50"])

    # ---- inference ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def _detect(self, images: np.ndarray, batch_size: int, maps_of=None) -> list[list[dict]]:
        """Per image its boxes; `maps_of(slice)`, when given, hands the batch's cached backbone maps."""
        self.model.eval()
        found = []
        maps_of = maps_of or stored_maps_of(self.pyramid.body_maps, images, self.device, self._identity(), _padded)
        for sl in batches(len(images), batch_size):
            x = [_as_rgb(t) for t in to_tensor(images[sl], self.device)]
            self.pyramid.cached = maps_of(sl) if maps_of is not None else None
            try:
                outputs = self.model(x)
            finally:
                self.pyramid.cached = None
            for out in outputs:
                found.append([{"bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "score": float(s),
                               "class": self.class_names[int(lab) - 1]}
                              for (x0, y0, x1, y1), s, lab in zip(out["boxes"].tolist(), out["scores"].tolist(),
                                                                  out["labels"].tolist(), strict=True)])
        return found

    def predict_with_boxes(self, images: np.ndarray, batch_size: int = 8
                           ) -> tuple[np.ndarray, np.ndarray, list[list[dict]]]:
        """Boxes, and as anomaly map each pixel's highest box score (0 outside every box); image score: the
        highest box score."""
        found = self._detect(images, batch_size)
        h, w = images.shape[1:3]
        maps = np.zeros((len(images), h, w), np.float32)
        for m, boxes in zip(maps, found, strict=True):
            for b in boxes:
                x, y, bw, bh = b["bbox"]
                x0, y0 = max(int(x), 0), max(int(y), 0)
                x1, y1 = min(int(np.ceil(x + bw)), w), min(int(np.ceil(y + bh)), h)
                np.maximum(m[y0:y1, x0:x1], b["score"], out=m[y0:y1, x0:x1])
        scores = np.asarray([max((b["score"] for b in bs), default=0.0) for bs in found], np.float32)
        return maps, scores, found

    def predict(self, images: np.ndarray, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
        maps, scores, _ = self.predict_with_boxes(images, batch_size)
        return maps, scores

    def summary(self) -> dict[str, Any]:
        return dict(self.report)

    # ---- files --------------------------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        return {"detector": "det", **backbone_record(self.backbone), "strides": list(self.strides),
                "width": self.width, "class_names": self.class_names, "size": list(self.size),
                "score_thresh": self.score_thresh, "flips": self.flips, "head": self.head}

    def save(self, path: str | Path) -> None:
        """Pyramid and head weights (the backbone is named, not stored) in one safetensors file."""
        write_weights(path, self._trained_state(), self.config())

    @classmethod
    def load(cls, path: str | Path, backbone: Backbone | None = None) -> Det:
        state, meta = read_weights(path, "det", "det weights file")
        try:
            model = cls(backbone or backbone_of(meta), meta["strides"], meta["width"], meta["class_names"],
                        meta["size"], meta["score_thresh"], meta.get("flips", 4), meta.get("head", "fcos"))
            missing, unexpected = model.load_state_dict(state, strict=False)
        except (KeyError, RuntimeError) as e:
            raise DefectgenError(path, f"det weights do not fit this model ({str(e).splitlines()[0]})") from None
        missing = [k for k in missing if not _is_backbone_key(k)]
        if missing or unexpected:
            raise DefectgenError(path, f"det weights do not fit this model (missing {missing[:3]}, unexpected "
                                 f"{unexpected[:3]})")
        model.eval()
        return model


def _optimizer(params: list[nn.Parameter], lr: float):
    """AdamW and the linear warm-up of its rate over the first `WARMUP_STEPS` steps."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    return opt, torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.001, total_iters=WARMUP_STEPS)


def _is_backbone_key(key: str) -> bool:
    """Keys not saved: the frozen backbone (named in the file instead) and the `pyramid.` alias of the pyramid that
    FCOS holds as `model.backbone.`."""
    return key.startswith(("backbone.", "pyramid.")) or ".body." in f".{key}"


def _as_rgb(x: torch.Tensor) -> torch.Tensor:
    """C x H x W with three channels: the detection transform normalises three (the backbone reads gray back)."""
    return x.expand(3, -1, -1) if x.shape[0] == 1 else x

