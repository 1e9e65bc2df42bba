"""AST: asymmetric student-teacher with a segmentation head (close to DeSTSeg, CVPR 2023).

Teacher: the frozen backbone. Student: a small encoder-decoder with no skip connections (a skip would let the
defect pass straight through) that sees the synthetic-defect image and learns, with a cosine loss, to give the
teacher's features of the clean normal image: it denoises. Segmentation head: on the products of the
normalised teacher and student features, trained with focal + L1 loss against the synthetic masks.

Without synthetic defects (the `none` baseline) the head has nothing to learn from: the student is trained on
normals only and the map is the teacher-student cosine distance (STPM-style).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from defectgen.detect.backbone import TINY, Backbone, backbone_of, backbone_record
from defectgen.detect.base import Detector, DetectorOptions, read_weights, register_detector, write_weights
from defectgen.detect.convergence import (
    EarlyStopping,
    MapCache,
    Shuffled,
    backbone_identity,
    steps_per_epoch,
    train_by_epochs,
    validation_split,
)
from defectgen.detect.features import batches, smooth_maps, to_tensor, top_k_mean, upsample
from defectgen.detect.training import StepLoop


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class Student(nn.Module):
    """Encoder to stride 32, decoder back up to the teacher's finest stride; one 1x1 head per teacher level."""

    def __init__(self, out_channels: Sequence[int], strides: Sequence[int], width: int = 32, in_channels: int = 3):
        super().__init__()
        self.strides = [int(s) for s in strides]
        w = width
        self.encoder = nn.Sequential(  # the image as the teacher sees it: 1 channel for a gray DDPM teacher
            _block(in_channels, w, 2), _block(w, 2 * w, 2), _block(2 * w, 4 * w, 2), _block(4 * w, 8 * w, 2),
            _block(8 * w, 8 * w, 2),
        )
        # decoder stages: stride 32 -> 16 -> 8 -> 4 (-> 2 ...) as far as the finest teacher stride needs
        levels = []
        s, c = 32, 8 * w
        while s > min(self.strides):
            s //= 2
            nxt = max(w, c // 2)
            levels.append((s, _block(c, nxt)))
            c = nxt
        self.up_strides = [s for s, _ in levels]
        self.decoder = nn.ModuleList([b for _, b in levels])
        chans = {s: blk[3].out_channels for s, blk in levels}
        chans[32] = 8 * w
        self.heads = nn.ModuleList([nn.Conv2d(chans[s], c, 1) for s, c in zip(self.strides, out_channels,
                                                                               strict=True)])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.encoder(x)
        at = {32: h}
        for s, blk in zip(self.up_strides, self.decoder, strict=True):
            h = blk(F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False))
            at[s] = h
        out = []
        for s, head in zip(self.strides, self.heads, strict=True):
            size = (x.shape[-2] // s, x.shape[-1] // s)
            f = at[s] if at[s].shape[-2:] == size else F.interpolate(at[s], size=size, mode="bilinear",
                                                                      align_corners=False)
            out.append(head(f))
        return out


class SegHead(nn.Module):
    def __init__(self, in_channels: int, width: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def cosine_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over levels and positions of 1 - cos(student, teacher)."""
    return torch.stack([(1 - F.cosine_similarity(s, t, dim=1)).mean() for s, t in zip(student, teacher,
                                                                                      strict=True)]).mean()


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 4.0, alpha: float = 0.5) -> torch.Tensor:
    """Binary focal loss (torchvision's): hard pixels (rare defects, their borders) weigh more than easy
    background."""
    from torchvision.ops import sigmoid_focal_loss

    return sigmoid_focal_loss(logits, target, alpha=alpha, gamma=gamma, reduction="mean")


@register_detector("ast")
class AST(nn.Module, Detector):
    """teacher: the frozen backbone; strides: teacher levels (4, 8, 16 as in DeSTSeg); width: student width;
    top_k: fraction of the map's pixels averaged into the image score; sigma: blur of the map in pixels."""

    options = ("seed", "sigma", "steps", "batch_size", "lr", "width", "patience")
    needs_cleans = True

    def __init__(self, backbone: Backbone, strides: Sequence[int] = (4, 8, 16), width: int = 32,
                 head_width: int = 64, top_k: float = 0.002, sigma: float = 4.0):
        super().__init__()
        self.teacher = backbone
        self.strides = tuple(int(s) for s in strides)
        self.width, self.head_width = int(width), int(head_width)
        self.top_k, self.sigma = float(top_k), float(sigma)
        chans = backbone.channels(self.strides)
        self.student = Student(chans, self.strides, width, backbone.in_channels)
        self.head = SegHead(sum(chans), head_width)
        self.use_head = False  # becomes True once the head has seen synthetic defects
        self.train_options = DetectorOptions()
        self.history: list[float] = []
        self.convergence: dict[str, Any] = {}
        self.to(backbone.mean.device)

    @classmethod
    def from_options(cls, backbone: Backbone, options: DetectorOptions) -> AST:
        # the tiny test backbone gets a student to match; real backbones DeSTSeg-like width
        tiny = backbone.name == TINY
        width = options.width or (8 if tiny else 32)
        torch.manual_seed(options.seed)
        model = cls(backbone, width=width, head_width=2 * width if tiny else 64, sigma=options.sigma)
        model.train_options = options
        return model

    def fit(self, normals: np.ndarray, defects: np.ndarray | None = None, masks: np.ndarray | None = None,
            progress: bool = False, *, cleans: np.ndarray | None = None, labels: np.ndarray | None = None,
            class_names: Sequence[str] = (), desc: str | None = None) -> AST:
        """`train_ast` with the options given to `from_options` (labels and class names are not used)."""
        o = self.train_options
        self.history, self.convergence = train_ast(
            self, normals, defects, masks, cleans, steps=o.steps, batch_size=o.batch_size, lr=o.lr, seed=o.seed,
            patience=o.patience, progress=progress, desc=desc or "ast")
        return self

    def summary(self) -> dict[str, Any]:
        h = self.history
        if not h:
            return {}
        n = max(1, len(h) // 20)
        return {"loss_first": float(np.mean(h[:n])), "loss_last": float(np.mean(h[-n:])), "steps": len(h),
                **self.convergence}

    @property
    def device(self) -> torch.device:
        return self.teacher.mean.device

    def _pair(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        with torch.no_grad():
            t = self.teacher(x, self.strides)
        return t, self.student(self.teacher._prepare(x))

    def _head_input(self, t: list[torch.Tensor], s: list[torch.Tensor]) -> torch.Tensor:
        size = t[0].shape[-2:]
        parts = []
        for ti, si in zip(t, s, strict=True):
            p = F.normalize(ti, dim=1) * F.normalize(si, dim=1)
            parts.append(p if p.shape[-2:] == size else F.interpolate(p, size=size, mode="bilinear",
                                                                      align_corners=False))
        return torch.cat(parts, dim=1)

    def losses(self, images: torch.Tensor, clean: torch.Tensor, masks: torch.Tensor,
               with_head: bool) -> dict[str, torch.Tensor]:
        """images: defect (or normal) images, clean: the normals they came from, masks: B x H x W in {0, 1}."""
        with torch.no_grad():
            t_clean = self.teacher(clean, self.strides)
            t_img = self.teacher(images, self.strides)
        return self.losses_of(images, t_clean, t_img, masks, with_head)

    def losses_of(self, images: torch.Tensor, t_clean: list[torch.Tensor], t_img: list[torch.Tensor],
                  masks: torch.Tensor, with_head: bool) -> dict[str, torch.Tensor]:
        """`losses` with the teacher's maps of the clean and the defect images given (live or cached)."""
        s = self.student(self.teacher._prepare(images))
        out = {"cosine": cosine_loss(s, t_clean)}
        if with_head:
            # the head learns from the student's current output without pushing gradients into it
            logits = self.head(self._head_input(t_img, [x.detach() for x in s]))
            logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
            out["focal"] = focal_loss(logits, masks)
            out["l1"] = (torch.sigmoid(logits) - masks).abs().mean()
        out["total"] = sum(out.values())
        return out

    def head_map(self, images: torch.Tensor, t_img: list[torch.Tensor]) -> torch.Tensor:
        """The head's defect probability, B x H x W, of images whose teacher maps are given."""
        s = self.student(self.teacher._prepare(images))
        return torch.sigmoid(upsample(self.head(self._head_input(t_img, s)), tuple(images.shape[-2:])))[:, 0]

    @torch.no_grad()
    def predict(self, images: Sequence[np.ndarray] | np.ndarray, batch_size: int = 16
                ) -> tuple[np.ndarray, np.ndarray]:
        """(maps N x H x W float32, image scores N = mean of the top `top_k` fraction of each map)."""
        self.eval()
        maps = []
        for sl in batches(len(images), batch_size):
            x = to_tensor(images[sl], self.device)
            t, s = self._pair(x)
            if self.use_head:
                m = torch.sigmoid(upsample(self.head(self._head_input(t, s)), tuple(x.shape[-2:])))
                maps.append(m.cpu().numpy())
            else:
                d = sum(upsample(1 - F.cosine_similarity(ti, si, dim=1), tuple(x.shape[-2:]))
                        for ti, si in zip(t, s, strict=True))
                maps.append(smooth_maps(d.cpu().numpy(), self.sigma))
        out = np.concatenate(maps).astype(np.float32)
        return out, self.image_scores(out)

    def image_scores(self, maps: Sequence[np.ndarray]) -> np.ndarray:
        """The mean of each map's top `top_k` fraction of pixels."""
        return top_k_mean(maps, self.top_k)

    def config(self) -> dict:
        return {"detector": "ast", **backbone_record(self.teacher), "strides": list(self.strides),
                "width": self.width, "head_width": self.head_width, "top_k": self.top_k, "sigma": self.sigma,
                "use_head": self.use_head}

    def save(self, path: str | Path) -> None:
        """Student and head weights (the teacher is named, not stored) in one safetensors file."""
        state = {f"student.{k}": v for k, v in self.student.state_dict().items()}
        state.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
        write_weights(path, state, self.config())

    @classmethod
    def load(cls, path: str | Path, backbone: Backbone | None = None) -> AST:
        state, meta = read_weights(path, "ast", "AST weights file")
        model = cls(backbone or backbone_of(meta), meta["strides"], meta["width"],
                    meta["head_width"], meta["top_k"], meta["sigma"])
        model.student.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("student.")})
        model.head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
        model.use_head = bool(meta.get("use_head"))
        model.to(model.device)
        return model


# ---- training ---------------------------------------------------------------------------------------------------

def train_ast(model: AST, normals: np.ndarray, defects: np.ndarray | None = None,
              masks: np.ndarray | None = None, cleans: np.ndarray | None = None, steps: int = 1000,
              batch_size: int = 8, lr: float = 1e-3, seed: int = 0, patience: int = 5, progress: bool = True,
              desc: str = "ast") -> tuple[list[float], dict[str, Any]]:
    """Train the student (and, with defects, the segmentation head) for at most `steps` Adam steps; returns the
    loss of each step and how training converged. normals: N x H x W x C uint8. defects/masks/cleans: the synthetic
    images, their masks and the normals they were made from (equal shapes). Half of each batch is synthetic when
    there are defects.

    With defects, training runs by passes over the training defects with early stopping: a validation split carved
    from them (`convergence.validation_split`) is scored by the head's pixel AP after each pass, the best pass's
    student and head are kept, and `patience` passes without a gain end training. The frozen teacher's maps of
    every image (normals as they are and mirrored, defects, their clean normals) are computed once and cached; the
    student, which learns, runs live. Without defects the student alone learns, for `steps` steps."""
    has_defects = defects is not None and len(defects) > 0
    if has_defects and (masks is None or cleans is None or not len(masks) == len(cleans) == len(defects)):
        raise ValueError("defects need masks and clean images, one each")
    model.use_head = has_defects
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    params = list(model.student.parameters()) + (list(model.head.parameters()) if has_defects else [])
    opt = torch.optim.Adam(params, lr=lr, weight_decay=1e-5)
    model.student.train()
    model.head.train()
    n_def = batch_size // 2 if has_defects else 0
    n_norm = batch_size - n_def
    n_d = len(defects) if has_defects else 0
    normal0 = 2 * n_d  # the cache's images: defects, their cleans, then the normals
    cache, train, val = _teacher_cache(model, normals, defects, cleans, seed, max(batch_size, 16), progress, desc)
    loop = StepLoop(opt, steps, lr, batch_size, progress, desc)
    drawn = Shuffled(train, rng)
    mk_normal = np.zeros(normals.shape[1:3], np.float32)

    def step() -> float:
        # normals, half of them mirrored: a small set of normals is not memorised pixel by pixel
        keys = [(normal0 + int(i), int(rng.random() < 0.5)) for i in rng.integers(len(normals), size=n_norm)]
        picks = drawn.draw(n_def) if train else []
        x = torch.stack([cache.image(i, f) for i, f in keys] + [cache.image(j, 0) for j in picks]).to(model.device)
        t_clean = cache.maps(keys + [(n_d + j, 0) for j in picks])
        t_img = cache.maps(keys + [(j, 0) for j in picks])
        m = torch.from_numpy(np.stack([mk_normal] * n_norm + [masks[j].astype(np.float32) for j in picks])
                             ).to(model.device)
        loss = model.losses_of(x, t_clean, t_img, m, with_head=has_defects)["total"]
        loop.step(loss)
        return float(loss.detach())

    stop = EarlyStopping(patience)
    # a pass shows every training defect once (and lasts at least MIN_STEPS_PER_EPOCH steps); without defects a
    # "pass" is a tenth of the steps, for the record
    per_pass = steps_per_epoch(len(train), n_def) if train else max(1, steps // 10)
    train_by_epochs(step, per_pass, stop, lambda: _val_ap(model, cache, val, masks) if val else None,
                    lambda: _trained_state(model), max_steps=steps)
    history = loop.close()
    stop.restore(model)
    model.eval()
    report = stop.report(len(val), len(train), "pixel AP") if has_defects else {
        "epochs": len(stop.history), "train_images": len(normals),
        "stopped": "no defects to validate on: the student ran every step"}
    return history, report


def _teacher_cache(model: AST, normals, defects, cleans, seed: int, batch_size: int, progress: bool, desc: str
                   ) -> tuple[MapCache, list[int], list[int]]:
    """The teacher's map cache over defects, their cleans and the normals (in that order), filled for the training
    defects and their cleans and the validation defects; and the (train, validation) split of the defects."""
    n_d = 0 if defects is None else len(defects)
    images = (list(defects) + list(cleans) if n_d else []) + list(normals)
    cache = MapCache(lambda x: model.teacher(x, model.strides), images, model.device,
                     identity=backbone_identity(model.teacher, model.strides))
    train, val = validation_split(n_d, seed) if n_d else ([], [])
    cache.fill([(i, 0) for i in train] + [(n_d + i, 0) for i in train] + [(i, 0) for i in val], batch_size,
               progress, f"{desc}: teacher maps")
    return cache, train, val


def _trained_state(model: AST) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("teacher.")}


@torch.no_grad()
def _val_ap(model: AST, cache: MapCache, val: list[int], masks: np.ndarray) -> float:
    """Pixel AP of the head's maps of the validation defects (teacher maps from the cache)."""
    from defectgen.metrics import average_precision

    model.eval()
    probs = [model.head_map(torch.stack([cache.image(i, 0) for i in val[sl]]).to(model.device),
                            cache.maps([(i, 0) for i in val[sl]])).cpu() for sl in batches(len(val), 16)]
    model.student.train()
    model.head.train()
    return float(average_precision(np.asarray(masks)[val].astype(bool).ravel(), torch.cat(probs).numpy().ravel()))
