"""What every benchmark records about the machine it ran on."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np


def hardware(device=None) -> dict:
    """CPU model and cores, torch threads and versions, and the GPU when `device` is one."""
    import accelerate
    import diffusers
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "device": str(device) if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"),
            "diffusers": diffusers.__version__, "accelerate": accelerate.__version__}
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda)
    return info


# ---- shared by the proof scripts (proof.py on magnetic-tile, proof_neu.py on NEU-DET) ---------------------------

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def rel(path) -> str:
    """Results name paths relative to the repository, never the machine's layout."""
    return os.path.relpath(path, ROOT) if Path(str(path)).exists() else str(path)


def proof_parser(doc: str, configs: dict, dataset: str, generators: str):
    """The options every proof script takes; each script adds its own."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(configs), default="cpu")
    parser.add_argument("--data", type=Path, default=SHARED / "datasets" / dataset)
    parser.add_argument("--backbone", default=str(SHARED / "weights" / "mobilenet_v2_1.0_224"))
    parser.add_argument("--tokenizer", default=str(SHARED / "weights" / "clip-tokenizer"))
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--generators", default=generators)
    parser.add_argument("--reuse", action="store_true",
                        help="keep models already trained in --work (to vary synthesis or detection only)")
    parser.add_argument("--tag", default="", help="suffix of the result files")
    return parser


def proof_train_config(steps: int, batch: int, lr: float, seed: int, gpu: bool):
    """Short-run training settings: warm-up a tenth of the run (at most 200 steps), a checkpoint half-way."""
    from defectgen.diffusion.training import TrainConfig

    return TrainConfig(steps=steps, batch_size=batch, lr=lr, warmup_steps=min(200, steps // 10),
                       checkpoint_every=max(steps // 2, 1), seed=seed, mixed_precision="bf16" if gpu else "no")


def reusable_model(folder: Path, reuse: bool) -> dict | None:
    """The timing record of a model kept from an earlier run in `folder`, or None when it must be trained."""
    if reuse and (folder / "defectgen.json").is_file():
        return {"train_s": None, "reused": rel(folder)}
    return None


def stack_rows(rows: list[np.ndarray]) -> np.ndarray:
    """Contact-sheet rows of different widths, one under the other, padded white on the right."""
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows])


def fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def write_results(name: str, out: dict, markdown: str, figure: Path) -> None:
    """benchmarks/results/<name>.json and .md, and a copy of the figure, then the Markdown on stdout."""
    import json
    import shutil

    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(out, indent=2, default=float) + "\n")
    (results / f"{name}.md").write_text(markdown)
    shutil.copy(figure, results / figure.name)
    print(markdown)
