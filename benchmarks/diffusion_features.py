"""Diffusion features against the MobileNetV2 backbone, and both fused (issue 16, DESIGN.md method 7).

Magnetic-tile (the proof's CPU config: 128 px short side, 200 normals, coreset 5%): ExDD (`none` baseline: plain
PatchCore on the normals) and seg (`real` baseline: the labeled/ defects alone, 200 steps) with each backbone:
MobileNetV2, the DDPM run's decoder features (`--ddpm`, PCA to `--feature-dim` channels a level for ExDD; seg's
1x1 laterals are its own learned projection), and both side by side (`MOBILENET+DDPM`). NEU-DET (`--neu-ddpm`, a
DDPM or cddpm run trained on NEU-DET, e.g. the proof's cddpm-20): seg on the 20% label subset
(`--neu-labels`) with each backbone, COCO box mAP@0.5 on the test set.

Memory per patch is the float32 size of one feature vector (ExDD: one memory-bank row; seg: the decoder's input at
stride 4); time per image is the test pass (features and scoring) over the test images.

    python benchmarks/diffusion_features.py --ddpm out/proof-cpu/ddpm \\
        --neu-ddpm out/proof-neu-cpu/cddpm-20 --neu-labels out/proof-neu-cpu/labels-20     # the CPU config
    python benchmarks/diffusion_features.py --ddpm RUN --max-train 8 --max-test 8 --out smoke.json

Results: benchmarks/results/diffusion_features_cpu.json (or --out), with the hardware named.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import SHARED, command_line, fmt, provenance, rel  # noqa: E402
from defectgen.evaluate import ValidationConfig, run_validation  # noqa: E402

SEG_STRIDES = (4, 8, 16, 32)
METRICS = ("image_auroc", "pixel_auroc", "aupro", "pixel_ap")


def _memory(run: dict, backbone: str, detector: str, timesteps) -> dict:
    if "compression" in run:  # ExDD on diffusion features: before and after the PCA
        return {k: run["compression"][k] for k in ("channels_raw", "channels", "bytes_per_patch_raw",
                                                   "bytes_per_patch")}
    from defectgen.detect.backbone import load_backbone

    bb = load_backbone(backbone, feature_timesteps=timesteps)
    channels = sum(bb.channels((8, 16) if detector == "exdd" else SEG_STRIDES))
    return {"channels": channels, "bytes_per_patch": 4 * channels}


def one_run(args: argparse.Namespace, detector: str, backbone: str, work: Path, **where) -> dict:
    """One validate run of `detector` with `backbone`: figures, memory per patch, seconds per image."""
    is_ddpm = any((Path(p) / "defectgen.json").is_file() for p in backbone.split("+"))
    res = run_validation(ValidationConfig(
        detector, backbone=backbone, seed=args.seed, n_overlays=0, progress=False,
        feature_timesteps=args.timesteps if is_ddpm else None, feature_dim=args.feature_dim if is_ddpm else None,
        out=work / f"{detector}-{len(list(work.glob('*')))}", **where))
    name, run = next(iter(res["runs"].items()))
    row = {"detector": detector, "backbone": "+".join(rel(p) for p in backbone.split("+")), "run": name,
           "metrics": run["metrics"],
           **_memory(run, backbone, detector, args.timesteps if is_ddpm else None),
           "train_s": run["train_s"], "test_s_per_image": run["test_s"] / res["test"]["images"],
           "feature_timesteps": res["config"]["feature_timesteps"], "feature_dim": res["config"]["feature_dim"]}
    if "negative_bank" in run:
        row["negative_bank"] = run["negative_bank"]
        row["bank_mib"] = run["negative_bank"] * row["bytes_per_patch"] / 2**20
    if "coco" in run:
        row["map50"] = run["coco"]["map50"]
        row["per_class_map50"] = {c: v.get("map50") for c, v in run["coco"]["per_class"].items()}
    m = row["metrics"]
    print(f"{detector} {row['backbone']}: " + ", ".join(f"{k} {fmt(m.get(k))}" for k in METRICS)
          + (f", mAP@0.5 {fmt(row['map50'])}" if "map50" in row else "")
          + f", {row['bytes_per_patch']} B/patch, {row['test_s_per_image']:.3f} s/image", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ddpm", required=True, help="a DDPM run folder trained on magnetic-tile normals")
    parser.add_argument("--backbone", default=str(SHARED / "weights" / "mobilenet_v2_1.0_224"))
    parser.add_argument("--data", type=Path, default=SHARED / "datasets" / "magnetic-tile")
    parser.add_argument("--neu-ddpm", default=None, help="a DDPM/cddpm run trained on NEU-DET (NEU rows skipped "
                        "without it)")
    parser.add_argument("--neu-data", type=Path, default=SHARED / "datasets" / "neu-det")
    parser.add_argument("--neu-labels", type=Path, default=None, help="the labeled subset seg trains on (default: "
                        "NEU-DET's train/)")
    parser.add_argument("--detectors", default="exdd,seg")
    parser.add_argument("--resolution", default="128")
    parser.add_argument("--timesteps", type=lambda s: [int(v) for v in s.split(",")], default=[100])
    parser.add_argument("--feature-dim", type=int, default=32)
    parser.add_argument("--max-train", type=int, default=200)
    parser.add_argument("--max-test", type=int, default=None)
    parser.add_argument("--coreset-ratio", type=float, default=0.05)
    parser.add_argument("--steps", type=int, default=200, help="seg training steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "diffusion_features_cpu.json")
    args = parser.parse_args()
    started = time.perf_counter()
    backbones = [args.backbone, args.ddpm, f"{args.backbone}+{args.ddpm}"]
    rows, neu_rows = [], []

    def save() -> None:  # after every row: an interrupted run keeps what it measured
        out = {"benchmark": "diffusion features: MobileNetV2 vs DDPM decoder features vs both",
               "magnetic_tile": {"data": rel(args.data), "resolution": args.resolution, "max_train": args.max_train,
                                 "max_test": args.max_test, "coreset_ratio": args.coreset_ratio,
                                 "seg_steps": args.steps, "runs": rows} if rows else None,
               "neu_det": {"data": rel(args.neu_data), "labels": rel(args.neu_labels) if args.neu_labels else None,
                           "seg_steps": 300, "runs": neu_rows} if neu_rows else None,
               "timesteps": args.timesteps, "feature_dim": args.feature_dim, "seed": args.seed,
               **provenance(), "wall_time_s": time.perf_counter() - started,
               "command": command_line("benchmarks/diffusion_features.py", sys.argv[1:])}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        for detector in [d.strip() for d in args.detectors.split(",") if d.strip()]:
            seg = detector == "seg"
            for bb in backbones:
                rows.append(one_run(args, detector, bb, Path(tmp), train=args.data, test=args.data,
                                    baselines=["real"] if seg else ["none"], real_labeled=args.data if seg else None,
                                    resolution=args.resolution, max_train=args.max_train, max_test=args.max_test,
                                    coreset_ratio=args.coreset_ratio, steps=args.steps, batch_size=8))
                save()
        if args.neu_ddpm:
            for bb in (args.backbone, args.neu_ddpm, f"{args.backbone}+{args.neu_ddpm}"):
                neu_rows.append(one_run(args, "seg", bb, Path(tmp), train=None, test=args.neu_data / "test",
                                        baselines=["real"], real_labeled=args.neu_labels or args.neu_data / "train",
                                        resolution=args.resolution, steps=300, batch_size=8))
                save()
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
