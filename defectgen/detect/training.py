"""The AST training loop: batches of synthetic defects (with their clean normals and masks) mixed with normals;
and `StepLoop`, the optimiser steps, schedule, loss history and progress bar the trained detectors share."""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from defectgen.detect.ast import AST
from defectgen.detect.features import to_tensor


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
              batch_size: int = 8, lr: float = 1e-3, seed: int = 0, progress: bool = True,
              desc: str = "ast") -> list[float]:
    """Train the student (and, with defects, the segmentation head) for `steps` Adam steps; returns the loss
    of each step. normals: N x H x W x C uint8. defects/masks/cleans: the synthetic images, their masks and the
    normals they were made from (equal shapes). Half of each batch is synthetic when there are defects."""
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
    loop = StepLoop(opt, steps, lr, batch_size, progress, desc)
    for _ in range(steps):
        idx = rng.integers(len(normals), size=n_norm)
        # random flips keep a small set of normals from being memorised pixel by pixel
        imgs = [normals[i][:, ::-1] if rng.random() < 0.5 else normals[i] for i in idx]
        clean = list(imgs)
        mk = [np.zeros(normals.shape[1:3], np.float32)] * n_norm
        if has_defects:
            jdx = rng.integers(len(defects), size=n_def)
            imgs += [defects[j] for j in jdx]
            clean += [cleans[j] for j in jdx]
            mk += [masks[j].astype(np.float32) for j in jdx]
        x = to_tensor(imgs, model.device)
        c = to_tensor(clean, model.device)
        m = torch.from_numpy(np.stack(mk)).to(model.device)
        loop.step(model.losses(x, c, m, with_head=has_defects)["total"])
    model.eval()
    return loop.close()
