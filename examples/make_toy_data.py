"""Make the bundled toy dataset: brushed-metal tiles (64x64 gray) in MVTec layout, with painted scratches and spots.

The files it writes are committed under examples/data/toy-tiles, so the quickstart needs no download; run it
again (python examples/make_toy_data.py) to rebuild them. Defects are painted from their masks, so the masks
are exact.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import cv2
import numpy as np

SIZE = 64


def tile(rng: np.random.Generator) -> np.ndarray:
    """Brushed metal: vertical streaks, a soft light gradient and grain."""
    streaks = cv2.GaussianBlur(rng.normal(0, 1, (1, SIZE)).astype(np.float32), (0, 0), 1.2)
    img = 120 + 18 * np.repeat(streaks, SIZE, axis=0)
    img += np.linspace(-15, 15, SIZE)[:, None] * rng.uniform(-1, 1)
    img += rng.normal(0, 4, (SIZE, SIZE))
    return np.clip(img, 0, 255).astype(np.uint8)


def defect(img: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros((SIZE, SIZE), np.uint8)
    if kind == "scratch":
        p0 = rng.integers(8, SIZE - 8, 2)
        angle = rng.uniform(0, np.pi)
        length = rng.uniform(18, 40)
        p1 = np.clip(p0 + length * np.array([np.cos(angle), np.sin(angle)]), 2, SIZE - 3).astype(int)
        cv2.line(mask, tuple(int(v) for v in p0), tuple(int(v) for v in p1), 1, thickness=int(rng.integers(1, 3)))
        shade = -55
    else:
        centre = tuple(int(v) for v in rng.integers(10, SIZE - 10, 2))
        axes = tuple(int(v) for v in rng.integers(3, 8, 2))
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, thickness=-1)
        shade = -70
    out = img.astype(np.float32)
    out[mask > 0] += shade + rng.normal(0, 6, int(mask.sum()))
    return np.clip(out, 0, 255).astype(np.uint8), mask * 255


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data" / "toy-tiles")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    if args.out.exists():
        shutil.rmtree(args.out)
    write = lambda path, img: (path.parent.mkdir(parents=True, exist_ok=True), cv2.imwrite(str(path), img))  # noqa: E731
    for i in range(48):
        write(args.out / "train" / "good" / f"{i:03d}.png", tile(rng))
    for i in range(8):
        write(args.out / "test" / "good" / f"{i:03d}.png", tile(rng))
    for kind in ("scratch", "spot"):
        for i in range(8):
            img, mask = defect(tile(rng), kind, rng)
            write(args.out / "test" / kind / f"{i:03d}.png", img)
            write(args.out / "ground_truth" / kind / f"{i:03d}_mask.png", mask)
        for i in range(8):
            img, mask = defect(tile(rng), kind, rng)
            write(args.out / "labeled" / kind / f"{100 + i:03d}.png", img)
            write(args.out / "labeled" / kind / f"{100 + i:03d}_mask.png", mask)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
