"""Does the realism score mean what it says? Two controls on real data, beside any generated sets (issue 15).

- **real**: the dataset's own labeled defects (magnetic-tile's labeled/ split, never the test set) scored as if
  they were a generated set: the score a perfect generator would get.
- **no-op**: a generated set with every image put back to its source normal, masks and annotations unchanged: the
  "defects" of an inpainter that changed nothing. It should score 0.5 or below.

Each set is scored with the surface filter (`normal_quantile`, the default) and without it (the metric before
issue 15's fix), with KID beside it.

    python benchmarks/realism_controls.py --sets draem=out/proof-cpu/synth-draem-all-real-masks-q999 \\
        copypaste=out/proof-cpu/synth-copypaste-all-real-masks-q999

The no-op control is made from the first set given (its annotations must name each sample's `source`).
Results: benchmarks/results/realism_controls_cpu.json (+ .md), with the hardware named.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import SHARED, command_line, fmt, provenance, rel  # noqa: E402


def noop_copy(folder: Path, out: Path) -> Path:
    """`folder` (a synthesized COCO set) with each image replaced by its source normal."""
    from defectgen.io.images import read_image, write_image

    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(folder, out)
    for entry in json.loads((folder / "annotations.json").read_text())["images"]:
        source = entry.get("source")
        if not source:
            raise SystemExit(f"{folder / 'annotations.json'}: image {entry['file_name']} names no source")
        write_image(out / entry["file_name"], read_image(source))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED / "datasets" / "magnetic-tile")
    parser.add_argument("--backbone", default=str(SHARED / "weights" / "mobilenet_v2_1.0_224"))
    parser.add_argument("--sets", nargs="+", required=True, metavar="NAME=FOLDER")
    parser.add_argument("--resolution", default="128", help="realism's input (the proof's CPU det_res)")
    parser.add_argument("--work", type=Path, default=Path("out/realism-controls"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/realism_controls_cpu.json"))
    args = parser.parse_args()

    from defectgen.evaluate.quality import REALISM_NORMAL_QUANTILE, quality_report

    sets = dict(s.split("=", 1) for s in args.sets)
    first = Path(next(iter(sets.values())))
    folders = {"real (labeled/)": args.data / "labeled", "no-op": noop_copy(first, args.work / "noop"),
               **{k: Path(v) for k, v in sets.items()}}
    rows, started = {}, time.perf_counter()
    for name, folder in folders.items():
        row = {"folder": rel(folder)}
        for label, q in (("filtered", REALISM_NORMAL_QUANTILE), ("unfiltered", None)):
            t = time.perf_counter()
            report = quality_report(folder, args.data, backbone=args.backbone, resolution=args.resolution,
                                    normal_quantile=q)
            row.update(kid=report["kid"], generated_samples=report["generated_samples"])
            row[label] = {**report["realism"], "seconds": time.perf_counter() - t}
            print(f"{name:>16} {label:>10}: realism I {fmt(row[label]['image_auroc'])} "
                  f"P {fmt(row[label]['pixel_auroc'])}, patches {row[label]['patches']}", flush=True)
        rows[name] = row
    out = {"benchmark": "realism_controls", "data": rel(args.data), "backbone": rel(args.backbone),
           "resolution": args.resolution, "normal_quantile": REALISM_NORMAL_QUANTILE, "sets": rows,
           **provenance(), "wall_time_s": time.perf_counter() - started,
           "command": command_line("benchmarks/realism_controls.py", sys.argv[1:])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=float) + "\n")
    lines = ["| set | KID | realism I-AUROC (filtered) | P-AUROC (filtered) | patches kept | "
             "I-AUROC (unfiltered) | P-AUROC (unfiltered) |", "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        f, u = r["filtered"], r["unfiltered"]
        lines.append(f"| {name} | {fmt(r['kid'])} | {fmt(f['image_auroc'])} | {fmt(f['pixel_auroc'])} | "
                     f"{f['patches']['kept']} of {f['patches']['inside']} | {fmt(u['image_auroc'])} | "
                     f"{fmt(u['pixel_auroc'])} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
