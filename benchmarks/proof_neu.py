"""The proof on NEU-DET for the class-conditional generators: does each generated class look like its real class?

NEU-DET (../shared/datasets/neu-det, VOC layout) has six steel-defect classes, boxes only and no normal images.
The class- and mask-conditional DDPM and the text-guided LDM are trained on train/ with the boxes as masks; each
then paints the same number of defects of every class into the boxes of real train defects of that class (the
`RealMasks` source), on train images as canvases. The DRAEM-style baseline does the same with pasted texture.
Against the real test defects of the same class (crops around their boxes) we report:

- per-class KID (lower is better) and pooled KID, with real *train* crops as the floor a perfect generator reaches;
- class fidelity: a 5-nearest-neighbour vote on real train crops names each generated crop's class; recall per
  class, and the class balance of the generated set as that classifier sees it.

    python benchmarks/proof_neu.py --config smoke   # minutes: the chain runs (numbers mean nothing)
    python benchmarks/proof_neu.py --config cpu     # 2-core CPU, ~25 min: tiny models at 64 px
    python benchmarks/proof_neu.py --config gpu     # base/small presets at 128 px

Results: benchmarks/results/proof_neu_<config>.json and .md (seeds, hardware, wall times) and a contact sheet
(proof_neu_<config>_samples.png: a row per generator, real test defects on top, one column per class).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    fmt,
    hardware,
    proof_parser,
    proof_train_config,
    rel,
    reusable_model,
    stack_rows,
    write_results,
)

CONFIGS = {
    "smoke": {"ddpm_preset": "tiny", "ldm_preset": "tiny", "res": 32, "ddpm_steps": 30, "ldm_vae_steps": 20,
              "ldm_steps": 20, "batch": 4, "per_class": 4, "sample_steps": 5, "crop": 64},
    "cpu": {"ddpm_preset": "tiny", "ldm_preset": "tiny", "res": 64, "ddpm_steps": 800, "ldm_vae_steps": 300,
            "ldm_steps": 600, "batch": 8, "per_class": 20, "sample_steps": 25, "crop": 64},
    "gpu": {"ddpm_preset": "base", "ldm_preset": "small", "res": 128, "ddpm_steps": 20000, "ldm_vae_steps": 5000,
            "ldm_steps": 10000, "batch": 32, "per_class": 100, "sample_steps": 50, "crop": 64},
}


def crops_by_class(dataset, size: int) -> tuple[list[np.ndarray], list[str]]:
    """A crop around each image's defect boxes, with the image's class."""
    from defectgen.quality import defect_crop

    crops, classes = [], []
    for s in dataset:
        mask = s.defect_mask()
        if mask.any():
            crops.append(defect_crop(s.image, mask, size))
            classes.append(s.class_name or "defect")
    return crops, classes


def main() -> None:
    parser = proof_parser(__doc__, CONFIGS, "neu-det", "cddpm,ldm,draem")
    parser.add_argument("--sampler", choices=("ddpm", "ddim", "dpm"), default="dpm", help="for both diffusion models")
    args = parser.parse_args()
    cfg = CONFIGS[args.config]
    work = args.work or ROOT / "out" / f"proof-neu-{args.config}"
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    from defectgen.detect.backbone import load_backbone
    from defectgen.diffusion.ddpm import train_ddpm
    from defectgen.diffusion.ldm import train_ldm
    from defectgen.io.datasets import open_dataset
    from defectgen.masks.real import RealMasks
    from defectgen.quality import class_fidelity, crop_features, diversity, kid, per_class_kid
    from defectgen.synth.pipeline import load_generator, synthesize

    train_dir, test_dir = args.data / "train", args.data / "test"
    masks = RealMasks(train_dir, seed=args.seed)  # each class's real train boxes
    classes = sorted(masks.by_class)
    canvases = open_dataset(train_dir / "images", "folder")  # NEU has no normal images: train images are canvases
    generators = [g.strip() for g in args.generators.split(",") if g.strip()]
    timings: dict[str, dict] = {}
    models: dict[str, Path] = {}

    def train_cfg(steps, lr):
        return proof_train_config(steps, cfg["batch"], lr, args.seed, gpu=args.config == "gpu")

    for name in generators:
        folder = work / name
        if name == "draem":
            models[name], timings[name] = Path("draem"), {"train_s": 0.0}
            continue
        record = reusable_model(folder, args.reuse)
        if record:
            models[name], timings[name] = folder, record
            continue
        t = time.perf_counter()
        if name == "cddpm":
            # crop=random: training windows around each box, the same windows synthesis paints in
            train_ddpm(folder, None, train_dir, preset=cfg["ddpm_preset"], resolution=cfg["res"], crop="random",
                       config=train_cfg(cfg["ddpm_steps"], 5e-4), overwrite=True)
        elif name == "ldm":
            tok = args.tokenizer if Path(args.tokenizer).is_dir() else None
            train_ldm(train_dir, folder, train_cfg(cfg["ldm_steps"], 2e-4), base="tiny", preset=cfg["ldm_preset"],
                      prompts=ROOT / "prompts" / "steel.yaml", resolution=cfg["res"], tokenizer=tok,
                      vae_steps=cfg["ldm_vae_steps"], overwrite=True)
        else:
            raise SystemExit(f"unknown generator {name!r}: choose from cddpm, ldm, draem")
        models[name], timings[name] = folder, {"train_s": time.perf_counter() - t}

    sets: dict[str, dict[str, Path]] = {}
    for name, model in models.items():
        generator = load_generator(str(model), steps=cfg["sample_steps"], sampler=args.sampler)
        t, written = time.perf_counter(), 0
        for k, c in enumerate(classes):  # one folder per class: the same count of every class, boxes of that class
            folder = work / f"synth-{name}" / c
            # a seed per class, so that sample i of each class is drawn on a different canvas
            synthesize(generator, canvases, folder, cfg["per_class"], masks=masks, class_name=c,
                       seed=args.seed * 1000 + k, batch_size=8, overwrite=True, progress=sys.stderr.isatty(),
                       log=lambda *_: None)
            sets.setdefault(name, {})[c] = folder
            written += cfg["per_class"]
        seconds = time.perf_counter() - t
        timings[name].update(synth_s=seconds, images_per_s=written / seconds)

    net = load_backbone(args.backbone)
    ref_crops, ref_cls = crops_by_class(open_dataset(train_dir).select(normal=False), cfg["crop"])
    test_crops, test_cls = crops_by_class(open_dataset(test_dir).select(normal=False), cfg["crop"])
    ref_feats, test_feats = crop_features(net, ref_crops), crop_features(net, test_crops)

    def scores(feats, cls, with_fidelity=True) -> dict:
        pooled, pooled_std = kid(feats, test_feats, seed=args.seed)
        row = {"kid": pooled, "kid_std": pooled_std, "diversity": diversity(feats),
               "per_class": per_class_kid(feats, cls, test_feats, test_cls, args.seed)}
        if with_fidelity:
            row["fidelity"] = class_fidelity(ref_feats, ref_cls, feats, cls)
        return row

    # the floor: real train crops (subsampled to the generated count per class) against real test crops
    rng = np.random.default_rng(args.seed)
    pick = [i for c in classes for i in rng.choice([j for j, x in enumerate(ref_cls) if x == c],
                                                    cfg["per_class"], replace=False)]
    table = {"real train": scores(ref_feats[pick], [ref_cls[i] for i in pick], with_fidelity=False)}
    table["real test"] = {"fidelity": class_fidelity(ref_feats, ref_cls, test_feats, test_cls)}
    for name, folders in sets.items():
        crops, cls = [], []
        for c, folder in folders.items():
            got, _ = crops_by_class(open_dataset(folder), cfg["crop"])
            crops += got
            cls += [c] * len(got)
        table[name] = scores(crop_features(net, crops), cls)

    name = f"proof_neu_{args.config}{'-' + args.tag if args.tag else ''}"
    figure = _figure(sets, test_dir, classes, work / f"{name}_samples.png")
    out = {
        "benchmark": "proof_neu", "config": args.config, "sampler": args.sampler, "settings": cfg, "seed": args.seed,
        "data": rel(args.data),
        "backbone": rel(args.backbone), "classes": classes, "hardware": hardware(),
        "wall_time_s": time.perf_counter() - started, "generation": timings, "quality": table,
        "command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"),
    }
    write_results(name, out, markdown(out), figure)


def _figure(sets: dict[str, dict[str, Path]], test_dir: Path, classes: list[str], path: Path) -> Path:
    """One column per class; rows: two real test defects, then two samples of each generator."""
    from defectgen.io.datasets import open_dataset
    from defectgen.io.images import write_image
    from defectgen.report import contact_sheet

    real = open_dataset(test_dir).select(normal=False)
    rows = []
    for k in range(2):
        picks = [[s for s in real if s.class_name == c][k] for c in classes]
        rows.append(contact_sheet(picks, tile=128, columns=len(classes)))
    for name, folders in sets.items():
        for k in range(2):
            samples = []
            for c in classes:
                s = open_dataset(folders[c])[k]
                s.class_name = f"{name}: {c}"
                samples.append(s)
            rows.append(contact_sheet(samples, tile=128, columns=len(classes)))
    write_image(path, stack_rows(rows))
    return path


def markdown(out: dict) -> str:
    f = fmt
    classes = out["classes"]
    lines = [f"NEU-DET proof ({out['config']} config, seed {out['seed']}, {out['hardware']['cpu']}"
             f"{', ' + out['hardware']['gpu'] if out['hardware'].get('gpu') else ''}; wall time "
             f"{out['wall_time_s'] / 60:.1f} min; {out['settings']['per_class']} samples per class)", "",
             "KID against the real test crops of the same class (lower is better; 'real train' is the floor):", "",
             "| set | pooled KID | " + " | ".join(classes) + " | diversity |",
             "|---|---|" + "---|" * len(classes) + "---|"]
    for name, row in out["quality"].items():
        if "kid" not in row:
            continue
        per = [f(row["per_class"].get(c, {}).get("kid")) for c in classes]
        lines.append(f"| {name} | {f(row['kid'])} | " + " | ".join(per) + f" | {f(row['diversity'])} |")
    lines += ["", "Class fidelity: recall of a 5-NN classifier on real train crops (accuracy = mean), and the "
              "class balance it sees (predicted counts):", "",
              "| set | accuracy | " + " | ".join(classes) + " | predicted balance |",
              "|---|---|" + "---|" * len(classes) + "---|"]
    for name, row in out["quality"].items():
        fid = row.get("fidelity")
        if fid:
            balance = ", ".join(str(fid["predicted"].get(c, 0)) for c in classes)
            lines.append(f"| {name} | {f(fid['accuracy'])} | " + " | ".join(f(fid["recall"].get(c))
                                                                           for c in classes) + f" | {balance} |")
    lines += ["", "| generator | train s | images/s |", "|---|---|---|"]
    for name, t in out["generation"].items():
        train = "reused" if t.get("train_s") is None else f"{t['train_s']:.0f}"
        lines.append(f"| {name} | {train} | {f(t.get('images_per_s'))} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
