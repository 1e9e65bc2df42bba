"""The AST training loop: batches of synthetic defects (with their clean normals and masks) mixed with normals;
and `StepLoop`, the optimiser steps, schedule, loss history and progress bar the trained detectors share."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from defectgen.detect.convergence import (
    EarlyStopping,
    MapCache,
    Shuffled,
    backbone_identity,
    steps_per_epoch,
    train_by_epochs,
    validation_split,
)
from defectgen.detect.features import batches

if TYPE_CHECKING:  # only a type here: ast.py imports this module to train
    from defectgen.detect.ast import AST


class StepLoop:
    """The optimiser side of a training loop: a cosine learning-rate schedule down to 5% of `lr`, one backward
    pass and optimiser step per loss, the loss history, and a progress bar (`defectgen.progress.bar`: drawn in a
    terminal, a plain line every so often when stderr is redirected) with the loss and images per second."""

    def __init__(self, opt: torch.optim.Optimizer, steps: int, lr: float, images_per_step: int, progress: bool,
                 desc: str):
        from defectgen.progress import above_bars, bar
        from defectgen.runtime import RunEstimate

        self.opt = opt
        device = next((p.device for g in opt.param_groups for p in g["params"]), None)
        # the estimate is said where the bar is shown, above it; within a job (validate) it speaks of the job
        self.estimate = RunEstimate.start(steps, device, above_bars(_say) if progress else None, what=desc)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1), eta_min=lr * 0.05)
        self.images_per_step = images_per_step
        self.history: list[float] = []
        self.bar = bar(total=steps, desc=desc, unit="step", leave=True, mininterval=1.0) if progress else None
        self.start = time.perf_counter()

    def step(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        self.history.append(float(loss.detach()))
        self.estimate.update(len(self.history))
        if self.bar is not None:
            rate = len(self.history) * self.images_per_step / max(time.perf_counter() - self.start, 1e-9)
            self.bar.set_postfix(loss=f"{self.history[-1]:.4f}", img_s=f"{rate:.1f}", refresh=False)
            self.bar.update(1)

    def close(self) -> list[float]:
        """The loss of each step (the bar, if any, closed)."""
        if self.bar is not None:
            self.bar.close()
        return self.history


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


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
