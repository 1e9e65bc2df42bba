"""ExDD and AST on magnetic-tile at 256x256 with the shared MobileNetV2, baselines none and draem, one run.

Trains on train/good only and scores on test/ (200 good, 271 real defects), as the project's benchmark protocol
(../shared/DESIGN.md) says. A defectgen synthetic set can be added with --synthetic. The full protocol is a GPU job;
on a CPU, use a subset (the flags are recorded in the JSON):

    python benchmarks/magnetic_tile.py                                          # full run (GPU)
    python benchmarks/magnetic_tile.py --max-train 200 --coreset-ratio 0.02 --steps 300   # CPU subset

Results: benchmarks/results/magnetic_tile_<device>.json (metrics per detector and run, per class, the exact
command, seed, hardware, wall time) and the reports (Markdown, ROC, overlays) under --work.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import command_line, provenance  # noqa: E402
from defectgen.evaluate import ValidationConfig, run_validation  # noqa: E402
from defectgen.io.files import atomic_write_json, atomic_write_text  # noqa: E402

SHARED = REPO.parent / "shared"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=SHARED / "datasets" / "magnetic-tile")
    ap.add_argument("--backbone", default=str(SHARED / "weights" / "mobilenet_v2_1.0_224"))
    ap.add_argument("--synthetic", type=Path, default=None, help="a defectgen synthetic set to add as a run")
    ap.add_argument("--detectors", default="exdd,ast")
    ap.add_argument("--baselines", default="none,draem")
    ap.add_argument("--resolution", default="256", help="HxW, or the short side with the aspect kept")
    ap.add_argument("--tile", type=int, default=None, help="score tiles of this side at native scale")
    ap.add_argument("--steps", type=int, default=2000, help="AST training steps per run")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--coreset-ratio", type=float, default=0.1)
    ap.add_argument("--n-draem", type=int, default=100, help="DRAEM-style defects for the draem baseline")
    ap.add_argument("--max-train", type=int, default=None, help="random subset of train/good (CPU runs)")
    ap.add_argument("--max-test", type=int, default=None, help="random subset of test/ (CPU smoke runs only)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    ap.add_argument("--work", type=Path, default=REPO / "benchmarks" / "results" / "magnetic_tile_reports")
    ap.add_argument("--out", type=Path, default=None, help="result JSON (default: results/magnetic_tile_<dev>.json)")
    args = ap.parse_args(argv)

    start = time.perf_counter()
    results = {}
    for det in [d.strip() for d in args.detectors.split(",") if d.strip()]:
        results[det] = run_validation(ValidationConfig(
            det, args.data, args.data, args.work / det, synthetic=args.synthetic,
            baselines=[b for b in args.baselines.split(",") if b], backbone=args.backbone,
            resolution=args.resolution, tile=args.tile, seed=args.seed, steps=args.steps, batch_size=args.batch_size,
            coreset_ratio=args.coreset_ratio, n_draem=args.n_draem, max_train=args.max_train,
            max_test=args.max_test, device=args.device, overwrite=True, progress=True,
        ))
    record = provenance()
    hw = record["hardware"]
    device = "gpu" if "gpu" in hw and args.device != "cpu" else "cpu"
    summary = {
        "benchmark": "magnetic_tile",
        "command": command_line("benchmarks/magnetic_tile.py", argv if argv is not None else sys.argv[1:]),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "seed": args.seed, **record, "wall_time_s": time.perf_counter() - start,
        "results": {det: {"runs": r["runs"], "config": r["config"], "train": r["train"], "test": r["test"],
                          "wall_time_s": r["wall_time_s"]} for det, r in results.items()},
    }
    out = args.out or REPO / "benchmarks" / "results" / f"magnetic_tile_{device}.json"
    # results store paths relative to the repo so the committed JSON names no machine's folders
    text = json.dumps(summary, indent=2).replace(str(REPO.parent), "..")
    atomic_write_json(out, json.loads(text))
    lines = ["| detector | run | I-AUROC | P-AUROC | AUPRO@0.3 | pixel AP |", "|---|---|---|---|---|---|"]
    for det, r in results.items():
        for name, run in r["runs"].items():
            m = run["metrics"]
            cells = " | ".join("-" if m[k] is None else f"{m[k]:.3f}"
                               for k in ("image_auroc", "pixel_auroc", "aupro", "pixel_ap"))
            lines.append(f"| {det} | {name} | {cells} |")
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out} ({summary['wall_time_s']:.0f} s)")
    return summary


if __name__ == "__main__":
    main()
