"""Diffusion features against the MobileNetV2 backbone: `validate --detector exdd --baselines none` on magnetic-tile
with each backbone, recording accuracy beside memory per patch and time per image.

    python benchmarks/diffusion_features.py --ddpm out/proof-cpu/ddpm               # the CPU config
    python benchmarks/diffusion_features.py --ddpm out/proof-cpu/ddpm --max-train 8 --max-test 8 --out smoke.json

Results go to benchmarks/results/diffusion_features_cpu.json (or --out) with the hardware named. Memory per patch is
the float32 size of one memory-bank row (for the DDPM, before and after its PCA); time per image is the test pass
(feature extraction and nearest-neighbour search) over the test images.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import SHARED, hardware, rel  # noqa: E402
from defectgen.detect.validate import run_validation  # noqa: E402


def one_backbone(args: argparse.Namespace, backbone: str, work: Path) -> dict:
    """ExDD (plain PatchCore, the none baseline) with `backbone`: figures, memory per patch, seconds per image."""
    is_ddpm = (Path(backbone) / "defectgen.json").is_file()
    res = run_validation("exdd", args.data, args.data, work / Path(backbone).name, baselines=["none"],
                         backbone=backbone, resolution=args.resolution, seed=args.seed, max_train=args.max_train,
                         max_test=args.max_test, n_overlays=0, progress=False,
                         feature_timesteps=args.timesteps if is_ddpm else None,
                         feature_dim=args.feature_dim if is_ddpm else None)
    run = res["runs"]["none"]
    if "compression" in run:
        memory = {k: run["compression"][k] for k in ("channels_raw", "channels", "bytes_per_patch_raw",
                                                     "bytes_per_patch")}
    else:
        from defectgen.detect.backbone import load_backbone

        channels = sum(load_backbone(backbone).channels((8, 16)))
        memory = {"channels": channels, "bytes_per_patch": 4 * channels}
    return {"backbone": rel(backbone), "metrics": run["metrics"], **memory,
            "negative_bank": run["negative_bank"], "bank_mib": run["negative_bank"] * memory["bytes_per_patch"] / 2**20,
            "train_s": run["train_s"], "test_s_per_image": run["test_s"] / res["test"]["images"],
            "feature_timesteps": res["config"]["feature_timesteps"], "feature_dim": res["config"]["feature_dim"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ddpm", required=True, help="a DDPM run folder (e.g. out/proof-cpu/ddpm)")
    parser.add_argument("--backbone", default=str(SHARED / "weights" / "mobilenet_v2_1.0_224"))
    parser.add_argument("--data", type=Path, default=SHARED / "datasets" / "magnetic-tile")
    parser.add_argument("--resolution", default="256")
    parser.add_argument("--timesteps", type=lambda s: [int(v) for v in s.split(",")], default=[100])
    parser.add_argument("--feature-dim", type=int, default=32)
    parser.add_argument("--max-train", type=int, default=None)
    parser.add_argument("--max-test", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "diffusion_features_cpu.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [one_backbone(args, spec, Path(tmp)) for spec in (args.backbone, args.ddpm)]
    out = {"benchmark": "exdd on magnetic-tile: MobileNetV2 vs DDPM decoder features", "data": rel(args.data),
           "resolution": args.resolution, "max_train": args.max_train, "max_test": args.max_test, "runs": rows,
           "hardware": hardware()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    for r in rows:
        m = r["metrics"]
        print(f"{r['backbone']}: image AUROC {m['image_auroc']:.3f}, pixel AUROC {m['pixel_auroc']:.3f}, "
              f"{r['bytes_per_patch']} B/patch, {r['test_s_per_image']:.3f} s/image")
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
