"""Metrics speed: `defectgen.metrics.evaluate` (image AUROC, pixel AUROC, AUPRO, AP, F1-max) on a test set the
size of MVTec's largest category: --images maps at --size x --size, half with a defect region.

    python benchmarks/metrics_speed.py                         # 200 images at 256x256: a few seconds on 2 cores
    python benchmarks/metrics_speed.py --images 8 --size 64    # smoke run

Results go to benchmarks/results/metrics_speed_<device>.json with the hardware named. The metrics were once a
unit test with a time limit; a time depends on the machine, so it is measured and recorded here instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import provenance  # noqa: E402
from defectgen import metrics  # noqa: E402


def make_case(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n masks (the first half with one rectangular defect) and random maps raised by 1 inside the defects."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), bool)
    y0, x0 = size * 100 // 256, size * 60 // 256
    masks[:n // 2, y0:y0 + max(1, size * 40 // 256), x0:x0 + max(1, size * 30 // 256)] = True
    return masks, rng.random(masks.shape, dtype=np.float32) + masks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3, help="timed evaluations; the fastest is reported")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    masks, maps = make_case(args.images, args.size)
    seconds = []
    for _ in range(max(1, args.repeats)):
        start = time.perf_counter()
        result = metrics.evaluate(masks.any((1, 2)), maps.max((1, 2)), masks, maps)
        seconds.append(time.perf_counter() - start)
    report = {"benchmark": "metrics_speed", **provenance("cpu"),
              "images": args.images, "size": args.size, "pixels": int(masks.size), "seconds": seconds,
              "best_s": min(seconds), "pixels_per_s": masks.size / min(seconds),
              "aupro": result["aupro"], "pixel_auroc": result["pixel_auroc"]}
    if result["aupro"] <= 0.99:  # the defects stand out by a whole unit: a slower but wrong metric is no result
        raise SystemExit(f"AUPRO {result['aupro']:.4f} on separable maps; expected above 0.99")
    out = args.out or Path(__file__).parent / "results" / "metrics_speed_cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
