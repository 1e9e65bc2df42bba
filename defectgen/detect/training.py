"""`StepLoop`: the optimiser steps, schedule, loss history and progress bar the trained detectors share (AST's
training loop is in ast.py, seg's in seg.py)."""

from __future__ import annotations

import sys
import time

import torch


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
