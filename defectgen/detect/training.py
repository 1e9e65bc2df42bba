"""The AST training loop: batches of synthetic defects (with their clean normals and masks) mixed with normals."""

from __future__ import annotations

import time

import numpy as np
import torch

from defectgen.detect.ast import AST
from defectgen.detect.features import to_tensor


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
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1), eta_min=lr * 0.05)
    model.student.train()
    model.head.train()
    n_def = batch_size // 2 if has_defects else 0
    n_norm = batch_size - n_def
    history: list[float] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc=desc, unit="step", leave=True, mininterval=1.0)
    start = time.perf_counter()
    for step in range(steps):
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
        loss = model.losses(x, c, m, with_head=has_defects)
        opt.zero_grad(set_to_none=True)
        loss["total"].backward()
        opt.step()
        sched.step()
        history.append(float(loss["total"].detach()))
        if bar is not None:
            rate = (step + 1) * batch_size / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(loss=f"{history[-1]:.4f}", img_s=f"{rate:.1f}", refresh=False)
            bar.update(1)
    if bar is not None:
        bar.close()
    model.eval()
    return history
