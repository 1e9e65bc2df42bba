"""Large images at native size: `validate --detector exdd --tile N` on synthetic 2000x800 images (a handful of
normals, and test images with small bright defects), with peak memory and wall time.

    python benchmarks/large_images.py                          # 4 + 4 images of 2000x800, tiles of 256, MobileNetV2
    python benchmarks/large_images.py --backbone tiny --n 2    # smoke run
    python benchmarks/large_images.py --no-tile                # the same images whole (short side 800), to compare

Results go to benchmarks/results/large_images_cpu.json (--no-tile: large_images_native_cpu.json) with the hardware
named: peak RSS (resource.getrusage) after the libraries are loaded and the images made, and after the run, wall
time, the number of tiles and the detector's figures (the defects are easy: the figures show that the stitched
maps are right, not how good ExDD is).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import SHARED, command_line, provenance, rel  # noqa: E402
from defectgen.io.images import tile_starts, write_image, write_mask  # noqa: E402


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def surface(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A gray brushed-metal-like texture: smoothed noise, streaked along the long side."""
    noise = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), sigmaX=1.5, sigmaY=6)
    return np.clip(120 + 40 * noise / noise.std(), 0, 255).astype(np.uint8)[:, :, None]


def make_set(root: Path, n: int, h: int, w: int, seed: int) -> None:
    """MVTec layout: n normals in train/good, n // 2 normal and n - n // 2 defect test images (three spots of
    about 12x12 px each, 0.03% of the image) with masks."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        write_image(root / "train" / "good" / f"{i:03d}.png", surface(rng, h, w))
    for i in range(n // 2):
        write_image(root / "test" / "good" / f"{i:03d}.png", surface(rng, h, w))
    for i in range(n - n // 2):
        img, spots = surface(rng, h, w), np.zeros((h, w), np.uint8)
        for _ in range(3):
            y, x = rng.integers(20, h - 40), rng.integers(20, w - 40)
            cv2.circle(spots, (int(x), int(y)), 6, 1, -1)
        mask = spots > 0
        img[mask] = 250
        write_image(root / "test" / "spot" / f"{i:03d}.png", img)
        write_mask(root / "ground_truth" / "spot" / f"{i:03d}_mask.png", mask)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default=str(SHARED / "weights" / "mobilenet_v2_1.0_224"),
                    help="a transformers folder, or tiny")
    ap.add_argument("--n", type=int, default=4, help="normals, and test images (half with defects)")
    ap.add_argument("--size", default="2000x800", help="image HxW")
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--no-tile", action="store_true", help="whole images at native size (--resolution = short side)")
    ap.add_argument("--coreset-ratio", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    name = "large_images_native_cpu.json" if args.no_tile else "large_images_cpu.json"
    args.out = args.out or Path(__file__).parent / "results" / name
    tile = None if args.no_tile else args.tile
    import matplotlib.figure  # noqa: F401 - the libraries are loaded before the baseline memory is read
    import torch
    import transformers  # noqa: F401

    from defectgen.evaluate import ValidationConfig, run_validation

    h, w = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as work:
        data = Path(work) / "data"
        make_set(data, args.n, h, w, args.seed)
        before = peak_rss_mib()
        start = time.perf_counter()
        res = run_validation(ValidationConfig(
            "exdd", data, data, Path(work) / "report", synthetic=None, baselines=["none"], backbone=args.backbone,
            tile=tile, resolution=min(h, w) // 32 * 32, coreset_ratio=args.coreset_ratio, seed=args.seed, n_overlays=2,
            device="cpu", progress=False))
        wall = time.perf_counter() - start
    run = res["runs"]["none"]
    per_image = len(tile_starts(h, tile, tile // 2)) * len(tile_starts(w, tile, tile // 2)) if tile else 1
    report = {
        "benchmark": "large_images", **provenance("cpu"),
        "torch_threads": torch.get_num_threads(), "backbone": rel(args.backbone), "detector": "exdd",
        "image_hw": [h, w], "model_input_hw": res["config"]["resolution"], "normals": args.n,
        "test_images": args.n, "tile": tile, "stride": tile // 2 if tile else None,
        "tiles_per_test_image": per_image, "coreset_ratio": args.coreset_ratio,
        "peak_rss_mib_before_run": round(before, 1), "peak_rss_mib": round(peak_rss_mib(), 1),
        "wall_s": round(wall, 1), "train_s": round(run["train_s"], 1), "test_s": round(run["test_s"], 1),
        "negative_bank": run.get("negative_bank"), "metrics": run["metrics"],
        "command": command_line("benchmarks/large_images.py", sys.argv[1:]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
