"""How far are the test defects from the labeled defects the generators and detectors learn from? Each defect's
crop (the defect's box alone, squared; `defectgen.evaluate.quality.defect_crop` with no padding) is described by
the backbone's features, and each test defect gets the cosine distance to its nearest labeled defect. Near 0 the
test defect is a labeled one seen again: magnetic-tile photographs each tile under several exposures (file names
expN_num_M), and its labeled/ and test/ splits do not keep a tile's shots together.

Generated sets (--sets) get the same distance, for scale. Copy-paste is the control: it pastes labeled defects
onto other tiles, yet lies as far from them as the generators' defects do, because the crop carries the new
surface. So this distance finds a defect photographed again, not a defect pasted elsewhere: it is no test of a
generator's memorisation.

    python benchmarks/split_overlap.py --sets copypaste=$TMPDIR/proof-mt/synth-copypaste-exdd-3seeds \\
        cddpm@800=$TMPDIR/proof-mt/synth-cddpm-exdd-3seeds --tag magnetic-tile

Results: benchmarks/results/split_overlap_<tag>.json (+ .md, and .png: the closest test/labeled pairs).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, SHARED, command_line, provenance, rel, write_results  # noqa: E402

THRESHOLDS = (0.02, 0.05, 0.1)  # cosine distances reported as shares of the test defects


def nearest(x: np.ndarray, bank: np.ndarray, exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Each row of `x`'s cosine distance to its nearest row of `bank`, and that row's index."""
    a = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    b = bank / np.maximum(np.linalg.norm(bank, axis=1, keepdims=True), 1e-12)
    d = np.clip(1.0 - a @ b.T, 0.0, 2.0)
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    return d.min(axis=1), d.argmin(axis=1)


def summary(d: np.ndarray) -> dict:
    quantiles = {f"{q:g}": float(np.quantile(d, q)) for q in (0.05, 0.25, 0.75)}
    return {"median": float(np.median(d)), "quantiles": quantiles,
            "below": {f"{t:g}": float(np.mean(d < t)) for t in THRESHOLDS}}


def pairs_figure(pairs: list[tuple], path: Path) -> Path:
    """The closest test/labeled pairs side by side, each labelled with its distance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(pairs), figsize=(2.2 * len(pairs), 4.8), dpi=110, squeeze=False)
    for col, (d, test, labeled) in enumerate(pairs):
        for row, (sample, what) in enumerate(((test, "test"), (labeled, "labeled"))):
            ax = axes[row][col]
            ax.imshow(sample.image.squeeze(), cmap="gray")
            ax.contour(sample.defect_mask(), levels=[0.5], colors="red", linewidths=0.6)
            ax.set_title(f"{what}: {Path(str(sample.path)).name}" + (f"\nd = {d:.3f}" if row == 0 else ""),
                         fontsize=6)
            ax.axis("off")
    fig.suptitle("test defects and their nearest labeled defects (red: the mask)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED / "datasets" / "magnetic-tile",
                        help="an MVTec folder with labeled/ (what the models learn from) and test/")
    parser.add_argument("--labeled", type=Path, default=None, help="the labeled defects, if not DATA/labeled "
                        "(NEU-DET: its train/)")
    parser.add_argument("--test", type=Path, default=None, help="the test defects, if not DATA's test split "
                        "(NEU-DET: its test/)")
    parser.add_argument("--backbone", default=str(SHARED / "weights" / "mobilenet_v2_1.0_224"))
    parser.add_argument("--sets", nargs="*", default=[], metavar="NAME=FOLDER", help="generated sets, for scale")
    parser.add_argument("--pairs", type=int, default=6, help="closest pairs shown in the figure")
    parser.add_argument("--tag", required=True)
    args = parser.parse_args()
    started = time.perf_counter()

    from defectgen.detect.backbone import load_backbone
    from defectgen.evaluate.quality import crop_features, defect_crop
    from defectgen.io.datasets import open_dataset

    net = load_backbone(args.backbone)

    def defects(folder: Path, **select) -> tuple[np.ndarray, list]:
        # a generated set, or one per class in its subfolders (proof_neu.py's sets)
        parts = [folder] if (folder / "annotations.json").is_file() or select or not folder.is_dir() else \
            sorted(p for p in folder.iterdir() if (p / "annotations.json").is_file()) or [folder]
        samples = []
        for part in parts:
            dataset = open_dataset(part)
            samples += [s for s in (dataset.select(**select) if select else dataset)
                        if s.mask is not None and s.mask.any() or s.boxes]  # masks, or boxes (NEU-DET)
        return crop_features(net, [defect_crop(s.image, s.defect_mask(), pad=0.0) for s in samples]), samples

    labeled, labeled_samples = defects(args.labeled or args.data / "labeled")
    test, test_samples = defects(args.test, normal=False) if args.test else defects(args.data, split="test",
                                                                                  normal=False)
    to_labeled, which = nearest(test, labeled)
    sets = {}
    for name, folder in (s.split("=", 1) for s in args.sets):
        gen, samples = defects(Path(folder))
        sets[name] = {"folder": rel(folder), "samples": len(samples), **summary(nearest(gen, labeled)[0])}
    closest = np.argsort(to_labeled)[:args.pairs]
    pairs = [(float(to_labeled[i]), test_samples[i], labeled_samples[which[i]]) for i in closest]
    out = {
        "benchmark": "split_overlap", "tag": args.tag, "data": rel(args.data), "backbone": rel(args.backbone),
        "labeled": rel(args.labeled or args.data / "labeled"), "test": rel(args.test) if args.test else None,
        "labeled_defects": len(labeled_samples), "test_defects": len(test_samples),
        "test_to_labeled": summary(to_labeled),
        "labeled_to_other_labeled": summary(nearest(labeled, labeled, exclude_self=True)[0]),
        "test_to_other_test": summary(nearest(test, test, exclude_self=True)[0]),
        "closest_pairs": [{"distance": d, "test": rel(t.path), "labeled": rel(s.path)} for d, t, s in pairs],
        "sets": sets, **provenance(), "wall_time_s": time.perf_counter() - started,
        "command": command_line("benchmarks/split_overlap.py", sys.argv[1:]),
    }

    def row(name: str, s: dict) -> str:
        q = s["quantiles"]
        below = " / ".join(f"{s['below'][f'{t:g}']:.0%}" for t in THRESHOLDS)
        return f"| {name} | {q['0.05']:.3f} | {q['0.25']:.3f} | {s['median']:.3f} | {q['0.75']:.3f} | {below} |"

    lines = [f"# Test against labeled defects: {args.tag}", "",
             f"{len(labeled_samples)} labeled defects, {len(test_samples)} test defects. Cosine distance of each "
             "defect crop (its box, no context) to its nearest labeled defect, in the backbone's features.", "",
             "| defects | 5% | 25% | median | 75% | share below " + " / ".join(f"{t:g}" for t in THRESHOLDS) + " |",
             "|---|---|---|---|---|---|",
             row("test", out["test_to_labeled"]),
             row("labeled (each to another)", out["labeled_to_other_labeled"]),
             row("test to another test defect", out["test_to_other_test"]),
             *[row(name, s) for name, s in sets.items()], "",
             "Closest pairs: " + "; ".join(f"`{Path(p['test']).name}` / `{Path(p['labeled']).name}` {p['distance']:.3f}"
                                           for p in out["closest_pairs"]), ""]
    work = ROOT / "out"
    work.mkdir(exist_ok=True)
    figure = pairs_figure(pairs, work / f"split_overlap_{args.tag}.png")
    write_results(f"split_overlap_{args.tag}", out, "\n".join(lines), figure)


if __name__ == "__main__":
    main()
