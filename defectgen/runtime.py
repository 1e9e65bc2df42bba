"""Where work runs and what on: the one device picker and the one hardware record (reports and benchmarks)."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import torch


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The device asked for, else CUDA, else Apple MPS, else the CPU."""
    if device:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    return torch.device("mps" if mps is not None and mps.is_available() else "cpu")


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def hardware(device: str | torch.device | None = None) -> dict[str, Any]:
    """CPU model and cores, torch threads and versions, and the GPU when there is one."""
    info: dict[str, Any] = {
        "cpu": cpu_name(), "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "device": str(device) if device is not None else str(pick_device()),
    }
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda)
    return info


def device_words(device: str | torch.device | None) -> str:
    """'cpu (AMD EPYC 7B13, 2 threads)' or 'cuda (NVIDIA H100 80GB HBM3)': what a person calls the machine."""
    dev = torch.device(device) if device is not None else pick_device()
    if dev.type == "cuda" and torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(dev)})"
    if dev.type == "cpu":
        return f"cpu ({cpu_name()}, {torch.get_num_threads()} threads)"
    return str(dev)


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class RunEstimate:
    """After the first steps of a long run (more than a few seconds, or `probe` steps), one line with the device
    and how long the whole run will take, with the step count that fits in ten minutes when it runs long. It
    informs; it never shrinks what the user asked for. The progress bar keeps the running ETA."""

    LONG_S = 1800.0  # beyond this a quicker trial is worth suggesting
    QUICK_S = 600.0

    def __init__(self, total_steps: int, device, log, what: str = "training", probe: int = 5):
        self.total, self.device, self.log, self.what, self.probe = total_steps, device, log, what, probe
        self.start = time.perf_counter()
        self.said = log is None

    def update(self, done: int) -> None:
        """Call after each step with the number of steps done (in this run)."""
        if self.said or done <= 0:
            return
        elapsed = time.perf_counter() - self.start
        if done < self.probe and elapsed < 10:
            return
        self.said = True
        per_step = elapsed / done
        total = per_step * self.total
        line = (f"{self.what}: {self.total} steps on {device_words(self.device)} take about {duration(total)} "
                f"({per_step:.2f} s/step from the first {done})")
        if total > self.LONG_S:
            quick = max(int(self.QUICK_S / per_step), 1)
            line += f"; a trial of {quick} steps takes about {duration(quick * per_step)}"
        self.log(line)
