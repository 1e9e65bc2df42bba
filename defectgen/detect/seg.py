"""seg: a supervised segmentation detector on the frozen backbone (the downstream protocol of DSYM and of the
few-shot defect generation literature: train a segmenter on generated, real or both kinds of defects and
measure it on real ones).

Decoder: SegFormer-style and light: each backbone level (strides 4-32) projected by a 1x1 convolution,
upsampled to stride 4, concatenated, fused by two 3x3 convolutions; a 1x1 head gives the defect logit and, when
the training defects name several classes, one logit per class. Trained with focal + dice loss on (image,
mask) pairs: defect images and normal images with empty masks as negatives, flipped. The backbone stays frozen
(as AST's teacher and ExDD's extractor), so its maps of every training image and flip are computed once and cached
(`detect.convergence.MapCache`): the steps train only the decoder. Up to `steps` steps, with early stopping: after
each pass over the training defects a validation split carved from them (15%, from 7 defects up) is scored by
pixel AP, the best pass's weights are kept, and `patience` passes without a gain end training (a pass: at least
`convergence.MIN_STEPS_PER_EPOCH` steps); the summary says
how many passes ran and why it stopped. (Before the cache, images were also rotated and brightness-jittered.)

Label maps may mark pixels 255 (`IGNORE`): they are left out of every loss (pseudo-labels the teacher was unsure
of, `defectgen.detect.semi`). An exponential moving average of the decoder's weights is kept while training:
`teacher()` is the mean teacher built from it.

Image score: the mean of the top-k pixel scores (as AST). Boxes: connected components of the map above
`box_threshold`, scored by their peak and named by the class head (or the one class the model was trained on).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from defectgen.detect.ast import focal_loss
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
from defectgen.detect.features import batches, to_tensor, top_k_mean
from defectgen.detect.training import StepLoop
from defectgen.errors import DefectgenError

IGNORE = 255  # label of pixels no loss sees
EMA_DECAY = 0.99  # the teacher averages about the last 100 steps, or the last tenth of a shorter training


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice over the whole batch: normals in the batch add their false positives to the denominator."""
    p = torch.sigmoid(logits)
    return 1 - (2 * (p * target).sum() + eps) / (p.sum() + target.sum() + eps)


@register_detector("seg")
class Seg(nn.Module, Detector):
    """backbone: frozen feature extractor; strides: its levels the decoder reads; width: decoder channels;
    class_names: the defect classes (set by `fit`); top_k: fraction of the map's pixels averaged into the image
    score; box_threshold: map level that cuts boxes; min_box_area: smaller components (pixels) give no box."""

    options = ("seed", "steps", "batch_size", "lr", "width", "patience")
    supervised = True
    produces_boxes = True

    def __init__(self, backbone: Backbone, strides: Sequence[int] = (4, 8, 16, 32), width: int = 64,
                 class_names: Sequence[str] = (), top_k: float = 0.002, box_threshold: float = 0.5,
                 min_box_area: int = 4):
        super().__init__()
        self.backbone = backbone
        self.strides = tuple(int(s) for s in strides)
        self.width = int(width)
        self.top_k, self.box_threshold, self.min_box_area = float(top_k), float(box_threshold), int(min_box_area)
        chans = backbone.channels(self.strides)
        self.lateral = nn.ModuleList([nn.Conv2d(c, width, 1) for c in chans])
        self.fuse = nn.Sequential(
            nn.Conv2d(width * len(chans), width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        )
        self.class_names: list[str] = []
        self.head = nn.Conv2d(width, 1, 1)
        self._set_classes(class_names)
        self.train_options = DetectorOptions()
        self.history: list[float] = []
        self.ema: dict[str, torch.Tensor] = {}
        self.n_defects = 0
        self.convergence: dict[str, Any] = {}
        self.to(backbone.mean.device)

    @property
    def device(self) -> torch.device:
        return self.backbone.mean.device

    @property
    def n_class_logits(self) -> int:
        """A class head only where there is a choice to make."""
        return len(self.class_names) if len(self.class_names) > 1 else 0

    def _set_classes(self, names: Sequence[str]) -> None:
        self.class_names = [str(n) for n in names]
        if self.head.out_channels != 1 + self.n_class_logits or not self.class_names:
            self.head = nn.Conv2d(self.width, 1 + self.n_class_logits, 1).to(self.backbone.mean.device)
            with torch.no_grad():  # start at a defect prior of ~5% (RetinaNet): no flood of false positives
                self.head.bias[0] = -3.0

    @classmethod
    def from_options(cls, backbone: Backbone, options: DetectorOptions) -> Seg:
        torch.manual_seed(options.seed)
        model = cls(backbone, width=options.width or (16 if backbone.name == TINY else 64))
        model.train_options = options
        return model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B x C x H x W in [0, 1] -> B x (1 + classes) x H x W logits."""
        with torch.no_grad():
            feats = self.backbone(x, self.strides)
        return self.decode(feats, x.shape[-2:])

    def decode(self, feats: list[torch.Tensor], out_size) -> torch.Tensor:
        """The backbone's maps (live or cached) -> B x (1 + classes) x `out_size` logits."""
        size = feats[0].shape[-2:]
        parts = []
        for lat, f in zip(self.lateral, feats, strict=True):
            p = lat(f)
            parts.append(p if p.shape[-2:] == size else F.interpolate(p, size=size, mode="bilinear",
                                                                      align_corners=False))
        logits = self.head(self.fuse(torch.cat(parts, dim=1)))
        return F.interpolate(logits, size=tuple(out_size), mode="bilinear", align_corners=False)

    def losses(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """labels: B x H x W long, 0 = normal, 1 + class index inside defects, `IGNORE` left out."""
        return self.losses_of(self(x), labels)

    def losses_of(self, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        seen = labels != IGNORE
        defect = logits[:, 0][seen]
        target = (labels[seen] > 0).float()
        out = {"focal": focal_loss(defect, target, gamma=2.0), "dice": dice_loss(defect, target)}
        inside = (labels > 0) & seen
        if self.n_class_logits and inside.any():
            cls_logits = logits[:, 1:].permute(0, 2, 3, 1)[inside]
            out["class"] = F.cross_entropy(cls_logits, labels[inside] - 1)
        out["total"] = sum(out.values())
        return out

    def fit(self, normals: np.ndarray, defects: np.ndarray | None = None, masks: np.ndarray | None = None,
            progress: bool = False, *, cleans: np.ndarray | None = None, labels: np.ndarray | None = None,
            class_names: Sequence[str] = (), desc: str | None = None) -> Seg:
        """Train the decoder for `options.steps` Adam steps, half of each batch defects and half normals (all
        defects when `normals` is empty).
        Without `labels` every defect pixel is of one class: class_names[0], or 'defect'."""
        labels, class_names = _checked_labels(defects, masks, labels, class_names)
        o = self.train_options
        torch.manual_seed(o.seed)
        self._set_classes(class_names)
        self.ema = {k: v.detach().clone() for k, v in self._decoder_state().items()}
        ema_decay = max(0.0, min(EMA_DECAY, 1.0 - 10.0 / o.steps))
        self.n_defects = int(len(defects))
        h, w = defects.shape[1:3]
        rng = np.random.default_rng(o.seed)
        # half defects, half normals; a dataset without normals (NEU-DET) fills whole batches with defects,
        # whose background pixels are the negatives
        n_def = max(1, o.batch_size // 2) if len(normals) else o.batch_size
        n_norm = o.batch_size - n_def
        train, val = validation_split(len(defects), o.seed)
        images = list(defects) + list(normals)
        normal_ids = list(range(len(defects), len(images)))
        # the frozen backbone's maps of each defect in its four flips, computed up front; a normal's (as it is or
        # mirrored) only when a batch first draws it, since a run early-stopped may never draw most of them
        cache = MapCache(lambda x: self.backbone(x, self.strides), images, self.device,
                         identity=backbone_identity(self.backbone, self.strides))
        cache.fill([(i, f) for i in train for f in range(len(FLIPS))] + [(i, 0) for i in val],
                   max(o.batch_size, 16), progress, f"{desc or 'seg'}: backbone maps")
        params = [p for n, p in self.named_parameters() if not n.startswith("backbone.")]
        opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=1e-4)
        self.train()
        loop = StepLoop(opt, o.steps, o.lr, n_def + n_norm, progress, desc or "seg")
        self.history = loop.history
        drawn = Shuffled(train, rng)

        def step() -> float:
            keys = [(i, int(rng.integers(len(FLIPS)))) for i in drawn.draw(n_def)]
            keys += [(normal_ids[i], int(rng.integers(2))) for i in rng.integers(len(normals), size=n_norm)]
            y = torch.from_numpy(np.stack([
                np.flip(labels[i], [d + 2 for d in FLIPS[f]]) if i < len(defects) else np.zeros((h, w), np.int64)
                for i, f in keys]).copy()).to(self.device)
            loss = self.losses_of(self.decode(cache.maps(keys), (h, w)), y)["total"]
            loop.step(loss)
            self._update_ema(ema_decay)
            return float(loss.detach())

        stop = EarlyStopping(o.patience)
        train_by_epochs(step, steps_per_epoch(len(train), n_def), stop,
                        lambda: self._val_ap(cache, val, masks) if val else None, self._decoder_state,
                        max_steps=o.steps)
        loop.close()
        stop.restore(self)
        self.convergence = stop.report(len(val), len(train), "pixel AP")
        self.eval()
        return self

    @torch.no_grad()
    def _val_ap(self, cache: MapCache, val: list[int], masks: np.ndarray) -> float:
        """Pixel AP of the validation defects' defect maps, from their cached backbone maps."""
        from defectgen.metrics import average_precision

        self.eval()
        probs = [torch.sigmoid(self.decode(cache.maps([(i, 0) for i in val[sl]]), masks.shape[1:3])[:, 0]).cpu()
                 for sl in batches(len(val), 16)]
        self.train()
        return float(average_precision(np.asarray(masks)[val].astype(bool).ravel(), torch.cat(probs).numpy().ravel()))

    def _decoder_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    @torch.no_grad()
    def _update_ema(self, decay: float) -> None:
        for k, v in self._decoder_state().items():
            if v.is_floating_point():
                self.ema[k].lerp_(v, 1.0 - decay)
            else:
                self.ema[k].copy_(v)

    def teacher(self) -> Seg:
        """The mean teacher: a Seg on the same backbone with the moving average of this model's decoder weights
        over its training (steadier than the last step's weights; it labels unlabeled images)."""
        if not self.ema:
            raise RuntimeError("teacher() needs a fitted model")
        t = Seg(self.backbone, self.strides, self.width, self.class_names, self.top_k, self.box_threshold,
                self.min_box_area)
        t.load_state_dict(self.ema, strict=False)
        return t.eval()

    def summary(self) -> dict[str, Any]:
        h = self.history
        n = max(1, len(h) // 20)
        return {"loss_first": float(np.mean(h[:n])) if h else None, "loss_last": float(np.mean(h[-n:])) if h
                else None, "steps": len(h), "defect_images": self.n_defects, "classes": list(self.class_names),
                **self.convergence}

    @torch.no_grad()
    def _run(self, images: np.ndarray, batch_size: int, boxes: bool) -> tuple[np.ndarray, np.ndarray, list]:
        self.eval()
        maps, found = [], []
        maps_of = stored_maps_of(lambda x: self.backbone(x, self.strides), images, self.device,
                                 backbone_identity(self.backbone, self.strides))
        for sl in batches(len(images), batch_size):
            logits = (self(to_tensor(images[sl], self.device)) if maps_of is None
                      else self.decode(maps_of(sl), images.shape[1:3]))
            prob = torch.sigmoid(logits[:, 0]).cpu().numpy().astype(np.float32)
            maps.append(prob)
            if boxes:
                cls = torch.softmax(logits[:, 1:], dim=1).cpu().numpy() if self.n_class_logits else None
                found += [self._boxes(prob[i], None if cls is None else cls[i]) for i in range(len(prob))]
        out = np.concatenate(maps)
        return out, self.image_scores(out), found

    def image_scores(self, maps: Sequence[np.ndarray]) -> np.ndarray:
        """The mean of each map's top `top_k` fraction of pixels."""
        return top_k_mean(maps, self.top_k)

    def regions(self, prob: np.ndarray) -> Iterator[tuple[int, int, int, int, np.ndarray]]:
        """The defect regions of one probability map: connected components above `box_threshold` of at least
        `min_box_area` pixels, each as (x, y, w, h, its mask within that box)."""
        n, lab, stats, _ = cv2.connectedComponentsWithStats((prob >= self.box_threshold).astype(np.uint8),
                                                            connectivity=8)
        for i in range(1, n):
            x, y, w, h, area = (int(v) for v in stats[i])
            if area >= self.min_box_area:
                yield x, y, w, h, lab[y:y + h, x:x + w] == i

    def _boxes(self, prob: np.ndarray, cls: np.ndarray | None) -> list[dict[str, Any]]:
        out = []
        for x, y, w, h, region in self.regions(prob):
            name = self.class_names[0] if self.class_names else "defect"
            if cls is not None:
                name = self.class_names[int(cls[:, y:y + h, x:x + w][:, region].mean(axis=1).argmax())]
            out.append({"bbox": [float(x), float(y), float(w), float(h)],
                        "score": float(prob[y:y + h, x:x + w][region].max()), "class": name})
        return out

    @torch.no_grad()
    def predict_labels(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(defect probability maps N x H x W float32, class maps N x H x W: the index into `class_names` each pixel
        is most likely to be, 0 where the model knows one class) of images of one size."""
        self.eval()
        logits = self(to_tensor(images, self.device))
        classes = logits[:, 1:].argmax(dim=1) if self.n_class_logits else torch.zeros_like(logits[:, 0],
                                                                                             dtype=torch.long)
        return torch.sigmoid(logits[:, 0]).cpu().numpy().astype(np.float32), classes.cpu().numpy()

    def predict(self, images: np.ndarray, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """(defect probability maps N x H x W float32, image scores N = mean of each map's top `top_k`)."""
        maps, scores, _ = self._run(images, batch_size, boxes=False)
        return maps, scores

    def predict_with_boxes(self, images: np.ndarray, batch_size: int = 16
                           ) -> tuple[np.ndarray, np.ndarray, list[list[dict]]]:
        return self._run(images, batch_size, boxes=True)

    def config(self) -> dict[str, Any]:
        return {"detector": "seg", **backbone_record(self.backbone), "strides": list(self.strides),
                "width": self.width, "class_names": self.class_names, "top_k": self.top_k,
                "box_threshold": self.box_threshold, "min_box_area": self.min_box_area}

    def save(self, path: str | Path) -> None:
        """Decoder and head weights (the backbone is named, not stored) in one safetensors file."""
        write_weights(path, {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")},
                      self.config())

    @classmethod
    def load(cls, path: str | Path, backbone: Backbone | None = None) -> Seg:
        state, meta = read_weights(path, "seg", "seg weights file")
        try:
            model = cls(backbone or backbone_of(meta), meta["strides"], meta["width"],
                        meta["class_names"], meta["top_k"], meta["box_threshold"], meta["min_box_area"])
            missing, unexpected = model.load_state_dict(state, strict=False)
        except (KeyError, RuntimeError) as e:
            raise DefectgenError(path, f"seg weights do not fit this model ({str(e).splitlines()[0]})") from None
        missing = [k for k in missing if not k.startswith("backbone.")]
        if missing or unexpected:
            raise DefectgenError(path, f"seg weights do not fit this model (missing {missing[:3]}, unexpected "
                                 f"{unexpected[:3]})")
        model.to(model.device)
        model.eval()
        return model


def _checked_labels(defects, masks, labels, class_names: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """The training label maps and class names `fit` was given, checked; without `labels` every defect pixel is of
    one class, class_names[0] or 'defect'."""
    if defects is None or len(defects) == 0 or masks is None or not np.any(masks):
        raise DefectgenError(None, "seg is supervised and got no defect images with masks to learn from "
                             "(give a synthetic set with masks, or `real_labeled`)")
    if len(masks) != len(defects) or (labels is not None and len(labels) != len(defects)):
        raise ValueError("one mask (and label map) per defect image is needed")
    if labels is None:
        return np.asarray(masks, bool).astype(np.int64), list(class_names[:1]) or ["defect"]
    if not class_names or _max_class(labels) > len(class_names) or len(class_names) >= IGNORE:
        raise ValueError(f"labels name classes beyond class_names (at most {IGNORE - 1})")
    return np.asarray(labels).astype(np.int64), list(class_names)


def _max_class(labels) -> int:
    """The highest class label in label maps, `IGNORE` left out."""
    return max((int(v) for lab in labels for v in np.unique(lab) if v != IGNORE), default=0)
