"""The real-only learning curve: the `real` run of `validate` trained on shares of the labeled defects, several seeds
each (the share's subset and the detector's initialisation both drawn per seed), scored on the real test set. The
frozen backbone's maps of each image are computed once for the whole curve (`detect.convergence.shared_maps`).
Writes benchmarks/results/learning_curve_<dataset>_<detector>_<tag>.json (mean +- std per share, each step's gain
against twice its standard error, the commit, the hardware) and a PNG plot beside it.

    python benchmarks/learning_curve.py --dataset neu-det --detector det --shares 0.2,0.4,1.0 --seeds 0,1,2
    python benchmarks/learning_curve.py --dataset magnetic-tile --detector seg --shares 0.25,0.5,1.0 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import ROOT, SHARED, command_line, provenance  # noqa: E402


def mvtec_labeled_subset(root: Path, share: float, seed: int, work: Path) -> Path:
    """An MVTec-like folder whose labeled/ holds `share` of each class's labeled pairs (rounded up)."""
    folder = work / f"mt-labels-{round(share * 100)}-s{seed}"
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(seed)
    for cls in sorted(d for d in (root / "labeled").iterdir() if d.is_dir()):
        images = sorted(p for p in cls.iterdir() if p.is_file() and not p.stem.endswith("_mask"))
        for p in [images[i] for i in rng.permutation(len(images))][: int(np.ceil(share * len(images)))]:
            for f in (p, *cls.glob(f"{p.stem}_mask.*")):
                (folder / "labeled" / cls.name).mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, folder / "labeled" / cls.name / f.name)
    return folder


def score(run: dict, metric: str) -> float:
    return float(run["coco"][metric]) if metric.startswith("map") else float(run["metrics"][metric])


def summarise(values: dict[float, list[float]]) -> dict:
    """Mean, std and standard error per share; for each step up the curve, the gain and whether it exceeds
    twice its standard error (the two shares' errors combined)."""
    shares = sorted(values)
    per = {f"{s:g}": {"values": values[s], "mean": float(np.mean(values[s])),
                      "std": float(np.std(values[s], ddof=1)) if len(values[s]) > 1 else None,
                      "se": float(np.std(values[s], ddof=1) / np.sqrt(len(values[s]))) if len(values[s]) > 1
                      else None} for s in shares}
    steps = []
    for a, b in zip(shares, shares[1:], strict=False):
        pa, pb = per[f"{a:g}"], per[f"{b:g}"]
        se = np.hypot(pa["se"], pb["se"]) if pa["se"] is not None and pb["se"] is not None else None
        gain = pb["mean"] - pa["mean"]
        steps.append({"from": a, "to": b, "gain": gain, "se": se,
                      "beyond_two_se": bool(se is not None and gain > 2 * se)})
    return {"per_share": per, "steps": steps, "rises": all(s["beyond_two_se"] for s in steps)}


def plot(curve: dict, metric: str, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shares = [float(k) for k in curve["per_share"]]
    mean = [v["mean"] for v in curve["per_share"].values()]
    std = [v["std"] or 0.0 for v in curve["per_share"].values()]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    ax.errorbar([s * 100 for s in shares], mean, yerr=std, marker="o", capsize=4)
    for s, v in zip(shares, curve["per_share"].values(), strict=True):
        ax.scatter([s * 100] * len(v["values"]), v["values"], s=10, alpha=0.5, color="gray")
    ax.set_xlabel("share of the labeled defects (%)")
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=("neu-det", "magnetic-tile"), default="neu-det")
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--detector", choices=("det", "seg"), default="det")
    p.add_argument("--shares", default=None, help="default: 0.2,0.4,1.0 (NEU-DET), 0.25,0.5,1.0 (magnetic-tile)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--backbone", default=str(SHARED / "weights" / "mobilenet_v2_1.0_224"))
    p.add_argument("--resolution", default="224")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--steps", type=int, default=3000, help="seg: the most steps (early stopping ends sooner)")
    p.add_argument("--max-train", type=int, default=None, help="magnetic-tile: normals used (default: all)")
    p.add_argument("--tag", default="cpu")
    a = p.parse_args(argv)

    from benchmarks.proof_neu import labeled_subsets
    from defectgen.detect.convergence import shared_maps
    from defectgen.evaluate import ValidationConfig, run_validation

    data = a.data or SHARED / "datasets" / a.dataset
    shares = [float(v) for v in (a.shares or ("0.2,0.4,1.0" if a.dataset == "neu-det" else "0.25,0.5,1.0"))
              .split(",")]
    seeds = [int(v) for v in a.seeds.split(",")]
    metrics = ["map50", "map"] if a.detector == "det" else (["map50", "pixel_ap"] if a.dataset == "neu-det"
                                                            else ["pixel_ap", "aupro"])
    started_at = provenance()  # commit, date and hardware when the run started
    started = time.perf_counter()
    values: dict[str, dict[float, list[float]]] = {m: defaultdict(list) for m in metrics}
    runs = []
    # every run trains and scores on the same images through the same frozen backbone: its maps are computed once
    with tempfile.TemporaryDirectory(prefix="curve-") as tmp, shared_maps():
        work = Path(tmp)
        for seed in seeds:
            subsets = labeled_subsets(data / "train", shares, seed, work / f"s{seed}") if a.dataset == "neu-det" \
                else {s: mvtec_labeled_subset(data, s, seed, work) for s in shares}
            for share in shares:
                t0 = time.perf_counter()
                res = run_validation(ValidationConfig(
                    a.detector, None if a.dataset == "neu-det" else data, data,
                    work / f"report-{share:g}-{seed}", synthetic=None, baselines=("real",),
                    real_labeled=subsets[share], backbone=a.backbone, resolution=a.resolution, seed=seed,
                    steps=a.steps, epochs=a.epochs, patience=a.patience, max_train=a.max_train, n_overlays=0,
                    overwrite=True, progress=True))
                run = res["runs"]["real"]
                for m in metrics:
                    values[m][share].append(score(run, m))
                runs.append({"seed": seed, "share": share, "seconds": round(time.perf_counter() - t0, 1),
                             **{m: score(run, m) for m in metrics},
                             **{k: run.get(k) for k in ("epochs", "stopped", "best_epoch", "steps", "real_images")}})
                print(f"seed {seed} share {share:g}: " + ", ".join(f"{m} {runs[-1][m]:.3f}" for m in metrics),
                      flush=True)
                # written after every run: a curve cut short still leaves what it measured
                write(a, argv, started_at, shares, seeds, metrics, values, runs, time.perf_counter() - started)


def write(a, argv: list[str], started_at: dict, shares: list[float], seeds: list[int], metrics: list[str],
          values: dict[str, dict[float, list[float]]], runs: list[dict], seconds: float) -> None:
    """The results JSON and, once every share has a value, the PNG plot of the first metric."""
    curves = {m: summarise(v) for m, v in values.items()}
    name = f"learning_curve_{a.dataset}_{a.detector}_{a.tag}"
    out = {"benchmark": "learning_curve", "command": command_line("benchmarks/learning_curve.py", argv),
           **started_at, "dataset": a.dataset, "detector": a.detector,
           "shares": shares, "seeds": seeds, "complete": len(runs) == len(shares) * len(seeds), "curves": curves,
           "runs": runs, "total_seconds": round(seconds, 1)}
    results = ROOT / "benchmarks" / "results"
    (results / f"{name}.json").write_text(json.dumps(out, indent=2) + "\n")
    if len(values[metrics[0]]) == len(shares):
        plot(curves[metrics[0]], metrics[0], f"{a.dataset}, {a.detector}, real only ({len(seeds)} seeds)",
             results / f"{name}.png")
    if out["complete"]:
        print(json.dumps({m: {k: round(v["mean"], 3) for k, v in c["per_share"].items()} for m, c in curves.items()}),
              f"{out['total_seconds']} s")


if __name__ == "__main__":
    main(sys.argv[1:])
