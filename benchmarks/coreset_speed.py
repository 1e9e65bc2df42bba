"""Coreset speed: ExDD's greedy k-center coreset on 5,000 normals' worth of patches, the old one-pick-per-pass
loop against `greedy_coreset` as it is now (picks in sweeps), with the quality of each.

The patches: 5,000 random 64 x 64 crops of the magnetic-tile normals (train/good, crops of 48 px to the image's
short side, resized to 64) through the shared MobileNetV2 at strides 8 and 16, as `ExDD.fit` takes them: 8 x 8
patches of 128 channels an image, 320,000 rows; a 10% coreset picks 32,000. `--synthetic` uses random clustered
features of the same shape instead (no dataset or weights needed).

Quality: the coverage radius (the largest distance from any patch to its nearest bank member: what greedy
k-center minimises) and the mean such distance, both in the full feature space, old against new; plus the new
code's random-share path (`max_rows`, taken above 1,000,000 rows) forced on at 100,000 rows, for its cost.

    python benchmarks/coreset_speed.py                    # about 15 min on 2 CPU cores, most of it the old loop
    python benchmarks/coreset_speed.py --images 500       # smoke run

Results go to benchmarks/results/coreset_speed_<device>.json with the hardware and the git commit.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, SHARED, command_line, provenance, rel  # noqa: E402
from defectgen.detect.features import greedy_coreset, nearest_distance  # noqa: E402


def old_greedy_coreset(features: torch.Tensor, n: int, seed: int = 0, project_to: int = 128) -> torch.Tensor:
    """`greedy_coreset` as it was before the sweeps (commit ea6e3f4), kept here for comparison: one
    matrix-vector product over all rows per pick."""
    total = features.shape[0]
    if n >= total:
        return torch.arange(total, device=features.device)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    x = features
    if features.shape[1] > project_to:
        proj = torch.randn(features.shape[1], project_to, generator=gen) / project_to ** 0.5
        x = features @ proj.to(features.device)
    chosen = torch.empty(n, dtype=torch.long, device=features.device)
    chosen[0] = int(torch.randint(total, (1,), generator=gen))
    x_sq = (x * x).sum(1)
    min_d = x_sq - 2.0 * (x @ x[chosen[0]]) + x_sq[chosen[0]]
    for i in range(1, n):
        idx = torch.argmax(min_d)
        chosen[i] = idx
        min_d = torch.minimum(min_d, x_sq - 2.0 * (x @ x[idx]) + x_sq[idx])
    return chosen


def crops(data: Path, n: int, size: int, seed: int) -> np.ndarray:
    """n random square crops of the normals in `data`/train/good, resized to size x size, as 3-channel uint8."""
    import cv2

    files = sorted((data / "train" / "good").glob("*.jpg")) + sorted((data / "train" / "good").glob("*.png"))
    if not files:
        raise SystemExit(f"no normals in {data / 'train' / 'good'}; give --data or use --synthetic")
    images = [cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in files]
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        im = images[rng.integers(len(images))]
        side = int(rng.integers(min(48, min(im.shape)), min(im.shape) + 1))
        y, x = rng.integers(im.shape[0] - side + 1), rng.integers(im.shape[1] - side + 1)
        out[i] = cv2.resize(im[y:y + side, x:x + side], (size, size), interpolation=cv2.INTER_AREA)[..., None]
    return out


def real_patches(data: Path, backbone: str, n: int, size: int, seed: int) -> tuple[torch.Tensor, float]:
    from defectgen.detect.backbone import load_backbone
    from defectgen.detect.features import image_features

    images = crops(data, n, size, seed)
    bb = load_backbone(backbone, "cpu")
    start = time.perf_counter()
    feats = image_features(bb, images, (8, 16))
    seconds = time.perf_counter() - start
    return feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1]).contiguous(), seconds


def synthetic_patches(n: int, size: int, seed: int) -> torch.Tensor:
    """Clustered non-negative features of ExDD's shape at `size` (stride 8: (size/8)^2 patches of 128 channels)."""
    g = torch.Generator().manual_seed(seed)
    rows = n * (size // 8) ** 2
    centres = torch.randn(2000, 128, generator=g) * 2
    return (centres[torch.randint(2000, (rows,), generator=g)] + torch.randn(rows, 128, generator=g)).relu()


def quality(patches: torch.Tensor, chosen: torch.Tensor) -> dict[str, float]:
    d = nearest_distance(patches, patches[chosen])
    return {"coverage_radius": float(d.max()), "mean_nearest": float(d.mean()),
            "distinct_picks": int(torch.unique(chosen).numel())}


def timed(fn, *args, **kwargs) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--ratio", type=float, default=0.1, help="coreset ratio (ExDD's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=SHARED / "datasets" / "magnetic-tile")
    ap.add_argument("--backbone", default=str(SHARED / "weights" / "mobilenet_v2_1.0_224"))
    ap.add_argument("--synthetic", action="store_true", help="random clustered features instead of real ones")
    ap.add_argument("--sampled-rows", type=int, default=100_000,
                    help="also run the random-share path (max_rows) at this many rows (0: skip)")
    ap.add_argument("--skip-old", action="store_true", help="leave out the old loop (the slow part)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    started = time.perf_counter()
    feature_s = None
    if a.synthetic:
        patches, source = synthetic_patches(a.images, a.size, a.seed), "synthetic clustered features"
    else:
        patches, feature_s = real_patches(a.data, a.backbone, a.images, a.size, a.seed)
        source = f"{rel(a.data)} train/good crops through {Path(a.backbone).name}"
    n = max(1, int(round(a.ratio * patches.shape[0])))
    print(f"{patches.shape[0]} patches x {patches.shape[1]}, coreset of {n}", flush=True)
    runs: dict[str, dict] = {}
    new, new_s = timed(greedy_coreset, patches, n, a.seed)
    runs["new"] = {"seconds": round(new_s, 2), **quality(patches, new)}
    print("new", runs["new"], flush=True)
    if a.sampled_rows and a.sampled_rows < patches.shape[0]:
        sampled, sampled_s = timed(greedy_coreset, patches, n, a.seed, max_rows=a.sampled_rows)
        runs[f"new_max_rows_{a.sampled_rows}"] = {"seconds": round(sampled_s, 2), **quality(patches, sampled)}
        print("sampled", runs[f"new_max_rows_{a.sampled_rows}"], flush=True)
    if not a.skip_old:
        old, old_s = timed(old_greedy_coreset, patches, n, a.seed)
        runs["old"] = {"seconds": round(old_s, 2), **quality(patches, old)}
        same = (old == new).tolist()
        runs["new"]["same_picks_as_old"] = int(sum(same))
        runs["new"]["first_pick_differing_from_old"] = same.index(False) if False in same else None
        runs["new"]["shared_bank_rows_with_old"] = int(np.intersect1d(old.numpy(), new.numpy()).size)
        runs["new"]["speedup"] = round(old_s / new_s, 1)
        print("old", runs["old"], flush=True)
    report = {
        "benchmark": "coreset_speed", "command": command_line("benchmarks/coreset_speed.py", argv),
        **provenance("cpu"),
        "load_average_at_end": list(__import__("os").getloadavg()),
        "patches": {"source": source, "images": a.images, "size": a.size, "rows": int(patches.shape[0]),
                    "dims": int(patches.shape[1]), "feature_seconds": None if feature_s is None else
                    round(feature_s, 1)},
        "coreset": {"ratio": a.ratio, "picks": n, "seed": a.seed}, "runs": runs,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    out = a.out or ROOT / "benchmarks" / "results" / "coreset_speed_cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["runs"], indent=1), "->", rel(out))


if __name__ == "__main__":
    main(sys.argv[1:])
