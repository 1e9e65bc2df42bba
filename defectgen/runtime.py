"""Where work runs and what on: the one device picker and the one hardware record (reports and benchmarks)."""

from __future__ import annotations

import os
import platform
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
