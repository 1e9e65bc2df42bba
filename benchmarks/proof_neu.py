"""The proof on NEU-DET: does each generated class look like its real class, and does a detector trained with
the generated defects find more real ones than one trained on the real labels alone?

NEU-DET (../shared/datasets/neu-det, VOC layout) has six steel-defect classes, boxes only and no normal images.
With each fraction of the train labels (default 20%, 40%, 100%; a class-stratified subset drawn once, each
smaller one inside the larger, the same for every row), the class- and mask-conditional DDPM and the text-guided
LDM are trained on that subset with its boxes as masks; each then paints the same number of defects of every
class into the boxes of real labeled defects of that class (the `RealMasks` source), on the labeled images as
canvases (there are no normals; the canvases' own labeled defects stay labeled). The DRAEM-style baseline does
the same with pasted texture, copy-paste with the labeled defects themselves.

Detection (DSYM's protocol; `--detectors det,seg`: the box detector and the segmenter): each trained on the
labeled subset alone (`real`), on each set alone, and on the subset plus each set (`real+SET`), scored on the
real test set with COCO box mAP@0.5 per class (pycocotools). Generation quality on the sets of the largest share of
labels run, against the real test defects of the same class (crops around their boxes):

- per-class KID (lower is better) and pooled KID, with real *train* crops as the floor a perfect generator reaches;
- class fidelity: a 5-nearest-neighbour vote on real train crops names each generated crop's class; recall per
  class, and the class balance of the generated set as that classifier sees it.

    python benchmarks/proof_neu.py --config smoke   # minutes: the chain runs (numbers mean nothing)
    python benchmarks/proof_neu.py --config cpu     # 2-core CPU: tiny models at 64 px, seg at 128 px
    python benchmarks/proof_neu.py --config gpu     # base/small presets at 128 px, seg at 224 px

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
    command_line,
    ddpm_variant,
    fmt,
    proof_parser,
    proof_precision,
    proof_settings,
    proof_train_config,
    provenance,
    rel,
    reusable_model,
    seeded_json,
    stack_rows,
    write_results,
)

CONFIGS = {
    "smoke": {"ddpm_preset": "tiny", "ldm_preset": "tiny", "res": 32, "ddpm_steps": 30, "ldm_vae_steps": 20,
              "ldm_steps": 20, "batch": 4, "per_class": 4, "sample_steps": 5, "crop": 64,
              "det_res": 64, "seg_steps": 10, "seg_batch": 4},
    "cpu": {"ddpm_preset": "tiny", "ldm_preset": "tiny", "res": 64, "ddpm_steps": 800, "ldm_vae_steps": 300,
            "ldm_steps": 600, "batch": 8, "per_class": 20, "sample_steps": 25, "crop": 64,
            "det_res": 128, "seg_steps": 300, "seg_batch": 8},
    "gpu": {"ddpm_preset": "base", "ldm_preset": "small", "res": 128, "ddpm_steps": 20000, "ldm_vae_steps": 5000,
            "ldm_steps": 10000, "batch": 32, "per_class": 100, "sample_steps": 50, "crop": 64,
            "det_res": 224, "seg_steps": 3000, "seg_batch": 16},
}
GENERATORS = ("cddpm", "ldm", "draem", "copypaste", "transplant-cddpm")


def crops_by_class(dataset, size: int) -> tuple[list[np.ndarray], list[str]]:
    """A crop around each image's defect boxes, with the image's class."""
    from defectgen.evaluate.quality import defect_crop

    crops, classes = [], []
    for s in dataset:
        mask = s.defect_mask()
        if mask.any():
            crops.append(defect_crop(s.image, mask, size))
            classes.append(s.class_name or "defect")
    return crops, classes


def labeled_subsets(train_dir: Path, fractions: list[float], seed: int, work: Path) -> dict[float, Path]:
    """A VOC folder per fraction holding that share of each class's train images (rounded up), drawn from one
    shuffle so that each smaller subset lies inside the larger ones; 1.0 is train/ itself."""
    import shutil
    from collections import defaultdict

    from defectgen.io.datasets import open_dataset

    by_class: dict[str, list] = defaultdict(list)
    for e in open_dataset(train_dir).entries:
        by_class[e.class_name or "defect"].append(e)
    rng = np.random.default_rng(seed)
    order = {c: [entries[i] for i in rng.permutation(len(entries))] for c, entries in sorted(by_class.items())}
    out = {}
    for f in fractions:
        if f >= 1.0:
            out[f] = train_dir
            continue
        folder = work / f"labels-{round(f * 100)}"
        if folder.exists():
            shutil.rmtree(folder)
        for sub in ("images", "annotations"):
            (folder / sub).mkdir(parents=True)
        for entries in order.values():
            for e in entries[:int(np.ceil(f * len(entries)))]:
                shutil.copy2(e.image_path, folder / "images")
                shutil.copy2(e.annotation_file, folder / "annotations")
        out[f] = folder
    return out


def unlabeled_rest(train_dir: Path, labeled: Path, work: Path) -> Path:
    """A folder holding the train images outside the `labeled` subset, images only (their labels stay behind):
    the unlabeled images of the semi-supervised protocol."""
    import shutil

    taken = {p.name for p in (labeled / "images").iterdir()}
    folder = work / f"unlabeled-{labeled.name.removeprefix('labels-')}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for p in sorted((train_dir / "images").iterdir()):
        if p.name not in taken:
            shutil.copy2(p, folder)
    return folder


def main() -> None:
    parser = proof_parser(__doc__, CONFIGS, "neu-det", "cddpm,ldm,draem,copypaste")
    parser.add_argument("--sampler", choices=("ddpm", "ddim", "dpm"), default="dpm", help="for both diffusion models")
    parser.add_argument("--transplant-strength", type=float, default=0.5,
                        help="transplant-cddpm: t0/T of the conditional DDPM's pass over the pasted real defect")
    parser.add_argument("--transplant-keep-core", type=float, default=None,
                        help="transplant-cddpm: keep the pasted pixels in this share of each defect's depth")
    parser.add_argument("--fractions", default="0.2,0.4,1.0", help="shares of the train labels, comma-separated")
    parser.add_argument("--set-fractions", default=None, help="the shares at which the generators are trained and "
                        "their sets run (default: every share); the real-only runs of every share still make the "
                        "curve that each set's worth is read from")
    parser.add_argument("--detectors", default="seg", help="det (the box detector) and/or seg, comma-separated")
    parser.add_argument("--seeds", type=int, default=1, help="every detector run with this many seeds: mean ± std, "
                        "paired verdicts, and each real+SET's worth in real defects on the real-only curve that the "
                        "fractions make")
    parser.add_argument("--semi", action="store_true", help="also pseudo-label the rest of the train images "
                        "(labels not read) and train each run's +pseudo twin (validate --semi; shares below 100%%)")
    args = parser.parse_args()
    cfg = proof_settings(CONFIGS, args)
    work = args.work or ROOT / "out" / f"proof-neu-{args.config}"
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    from defectgen.evaluate import ValidationConfig, run_validation

    train_dir, test_dir = args.data / "train", args.data / "test"
    generators = [g.strip() for g in args.generators.split(",") if g.strip()]
    unknown = sorted(set(generators) - set(GENERATORS))
    if unknown:
        raise SystemExit(f"unknown generator(s) {', '.join(unknown)}: choose from {', '.join(GENERATORS)}")
    fractions = sorted({float(f) for f in args.fractions.split(",") if f.strip()})
    subsets = labeled_subsets(train_dir, fractions, args.seed, work)
    with_sets = sorted({float(f) for f in args.set_fractions.split(",")}) if args.set_fractions else fractions
    if not set(with_sets) <= set(fractions):
        raise SystemExit(f"--set-fractions {args.set_fractions} must be among --fractions {args.fractions}")
    timings: dict[str, dict] = {}
    sets: dict[float, dict[str, dict[str, Path]]] = {f: {} for f in fractions}
    for f in with_sets:
        tag = "" if f >= 1.0 else f"-{round(f * 100)}"
        sets[f], timings_f = make_sets(args, cfg, generators, subsets[f], work, tag)
        timings.update({name + tag: t for name, t in timings_f.items()})

    detection: dict[str, dict] = {}
    seeded: dict[str, dict] = {}
    detectors = [d.strip() for d in args.detectors.split(",") if d.strip()]
    for detector in detectors:
        for f in fractions:
            pct = f"{round(f * 100)}%"
            semi = unlabeled_rest(train_dir, subsets[f], work) if args.semi and f < 1.0 and detector == "seg" \
                else None
            # no generator: the real labels alone (with --semi, beside their +pseudo twin)
            for k, (name, folders) in enumerate(sets[f].items() or [(None, {})]):
                if name is None and args.sets_only:
                    continue  # the real-only runs come from the full proof this one is paired with
                first = k == 0 and not args.sets_only
                res = run_validation(ValidationConfig(
                    detector, None, test_dir, work / f"report-{detector}-{name or 'real'}-{round(f * 100)}",
                    synthetic=list(folders.values()) or None,
                    baselines=("real", "real+synthetic")[:1 if name is None else 2] if first else ("real+synthetic",),
                    real_labeled=subsets[f], backbone=args.backbone, resolution=cfg["det_res"], seed=args.seed,
                    steps=cfg["seg_steps"], batch_size=cfg["seg_batch"], overwrite=True, seeds=args.seeds,
                    progress=sys.stderr.isatty(), n_overlays=4, semi=semi))
                for run, values in res["runs"].items():
                    _row(detection, seeded, detector, pct, name, run, values)
    comparisons = {d: compare_fractions(seeded[d], fractions, d) for d in detectors if d in seeded}

    full = sets[max(with_sets)]
    table, classes = generation_quality(args, cfg, full, train_dir, test_dir)
    name = f"proof_neu_{args.config}{'-' + args.tag if args.tag else ''}"
    figure = _figure(full, test_dir, classes, work / f"{name}_samples.png")
    out = {
        "benchmark": "proof_neu", "config": args.config, "sampler": args.sampler, "settings": cfg, "seed": args.seed,
        "data": rel(args.data), "fractions": fractions, "set_fractions": with_sets,
        "labeled_images": {f"{round(f * 100)}%": len(list((subsets[f] / "annotations").glob("*.xml")))
                           for f in fractions},
        "backbone": rel(args.backbone), "classes": classes, **provenance(),
        "wall_time_s": time.perf_counter() - started, "generation": timings, "quality": table,
        "detection": detection, "semi": args.semi, "seeds": args.seeds, "detectors": detectors,
        "comparisons": comparisons, "sets_only": args.sets_only, "seeded": seeded_json(seeded),
        "command": command_line("benchmarks/proof_neu.py", sys.argv[1:]),
    }
    write_results(name, out, markdown(out), figure)


def run_key(name: str | None, run: str) -> str:
    """The proof's name for run `run` of the validate call that held set `name` (before the share's prefix)."""
    base, pseudo = run.removesuffix("+pseudo"), run.endswith("+pseudo")
    key = {"synthetic": f"{name} only", "real+synthetic": f"real+{name}"}.get(base, base)
    return key + ("+pseudo" if pseudo else "")


def _row(detection: dict, seeded: dict, detector: str, pct: str, name: str | None, run: str, values: dict) -> None:
    """One run's row of the detection table (`detection[pct][key]`, seg's keys as before, det's prefixed) and its
    values per seed (`seeded[detector]["pct key"]`)."""
    from defectgen.evaluate.compare import RunSeeds

    key = run_key(name, run)
    coco = values["coco"]
    spread = values.get("spread", {})
    detection.setdefault(pct, {})[key if detector == "seg" else f"{detector}: {key}"] = {
        "map50": coco["map50"], "map": coco["map"], "agnostic_map50": coco["agnostic_map50"],
        "map50_std": spread.get("map50", {}).get("std"),
        "pixel_auroc": values["metrics"].get("pixel_auroc"), "pixel_ap": values["metrics"].get("pixel_ap"),
        "per_class_map50": {c: v.get("map50") for c, v in coco["per_class"].items()},
        "real_images": values["real_images"], "synthetic_images": values["synthetic_images"],
        "train_s": values["train_s"], **({"pseudo": values["pseudo"]} if "pseudo" in values else {})}
    seeded.setdefault(detector, {})[f"{pct} {key}"] = RunSeeds.from_record(values, ("map50", "map"))


def compare_fractions(runs: dict, fractions: list[float], detector: str) -> dict:
    """Per share of the labels, the paired verdicts of each real+SET against real (and against real+copypaste), and
    each real+SET's worth in real defects on the real-only curve the shares make (the `real` run of each share,
    the same seeds)."""
    from defectgen.evaluate.compare import verdicts, worth

    pcts = [f"{round(f * 100)}%" for f in fractions]
    pairs = []
    for pct in pcts:
        mixed = [k for k in runs if k.startswith(f"{pct} real+") and not k.endswith("+pseudo")]
        pairs += [(k, f"{pct} real") for k in mixed if f"{pct} real" in runs]
        pairs += [(k, f"{pct} real+copypaste") for k in mixed if f"{pct} real+copypaste" in runs
                  and k != f"{pct} real+copypaste"]
    judged = verdicts(runs, ("map50", "map"), pairs=pairs)
    curve = [f"{pct} real" for pct in pcts if f"{pct} real" in runs]
    worths = worth({k: v for k, v in runs.items() if k in curve or " real+" in k}, "map50", curve=curve)
    return {"verdicts": [p.to_json() for p in judged], "worth": [w.to_json() for w in worths],
            "lines": [p.line() for p in judged] + [w.line() for w in worths]}


def make_sets(args, cfg: dict, generators: list[str], labeled: Path, work: Path, tag: str
              ) -> tuple[dict[str, dict[str, Path]], dict[str, dict]]:
    """Train each generator on `labeled` (a VOC folder) and paint `per_class` defects of every class with it on the
    labeled images, one folder per class. Returns {generator: {class: folder}} and the timings."""
    from defectgen.diffusion.train_ddpm import train_ddpm
    from defectgen.diffusion.train_ldm import train_ldm
    from defectgen.io.datasets import open_dataset
    from defectgen.masks.real import RealMasks
    from defectgen.prompts import PROMPT_DIR
    from defectgen.synth.options import SynthesisOptions
    from defectgen.synth.pipeline import load_generator, synthesize

    masks = RealMasks(labeled, seed=args.seed)  # each class's real labeled boxes
    classes = sorted(masks.by_class)
    canvases = open_dataset(labeled / "images", "folder")  # NEU has no normal images: labeled images are canvases
    timings: dict[str, dict] = {}
    models: dict[str, Path] = {}

    precision = proof_precision(args)

    def train_cfg(steps, lr):
        return proof_train_config(steps, cfg["batch"], lr, args.seed, precision)

    # the transplant re-draws pasted real defects with the conditional DDPM trained here
    wanted = [g for g in generators if g != "transplant-cddpm"]
    if "transplant-cddpm" in generators and "cddpm" not in wanted:
        wanted.append("cddpm")
    for name in wanted:
        folder = work / f"{name}{tag}"
        if name in ("draem", "copypaste"):  # nothing to train
            models[name], timings[name] = Path(name), {"train_s": 0.0}
            continue
        record = reusable_model(folder, args.reuse)
        if record:
            models[name], timings[name] = folder, record
            continue
        t = time.perf_counter()
        if name == "cddpm":
            # crop=random: training windows around each box, the same windows synthesis paints in
            train_ddpm(folder, None, labeled, preset=cfg["ddpm_preset"], resolution=cfg["res"], crop="random",
                       context=args.ddpm_context, target=args.ddpm_target,
                       config=train_cfg(cfg["ddpm_steps"], 5e-4), overwrite=True)
        else:
            tok = args.tokenizer if Path(args.tokenizer).is_dir() else None
            train_ldm(labeled, folder, config=train_cfg(cfg["ldm_steps"], 2e-4), base="tiny", preset=cfg["ldm_preset"],
                      prompts=PROMPT_DIR / "steel.yaml", resolution=cfg["res"], tokenizer=tok,
                      vae_steps=cfg["ldm_vae_steps"], overwrite=True)
        steps = cfg["ddpm_steps"] if name == "cddpm" else cfg["ldm_steps"]
        models[name], timings[name] = folder, {"train_s": time.perf_counter() - t, "steps": steps,
                                               "mixed_precision": precision}
        if name == "ldm":
            timings[name]["vae_steps"] = cfg["ldm_vae_steps"]
        else:
            timings[name].update(ddpm_variant(args))

    transplant = {"strength": args.transplant_strength, "keep_core": args.transplant_keep_core}
    if "transplant-cddpm" in generators:
        models["transplant-cddpm"] = models["cddpm"]
        timings["transplant-cddpm"] = {**timings["cddpm"], **transplant}
    sets: dict[str, dict[str, Path]] = {}
    for name, model in models.items():
        if name not in generators:  # a model trained only for the transplant
            continue
        options = {"labeled": labeled} if name == "copypaste" else {"steps": cfg["sample_steps"],
                                                                    "sampler": args.sampler}
        if name == "transplant-cddpm":
            options.update(labeled=labeled, **transplant)
        if name == "cddpm" and args.guidance is not None:
            options["guidance"] = timings[name]["guidance"] = args.guidance
        generator = load_generator(str(model), **options)
        t, written = time.perf_counter(), 0
        for k, c in enumerate(classes):  # one folder per class: the same count of every class, boxes of that class
            folder = work / f"synth-{name}{tag}" / c
            # a seed per class, so that sample i of each class is drawn on a different canvas
            synthesize(generator, canvases, folder, cfg["per_class"],
                       SynthesisOptions(masks="perlin" if name in ("copypaste", "transplant-cddpm") else masks,
                                        class_name=c,
                                        seed=args.seed * 1000 + k, batch_size=8, overwrite=True,
                                        progress=sys.stderr.isatty()),
                       log=lambda *_: None, protect=(labeled,))
            sets.setdefault(name, {})[c] = folder
            written += cfg["per_class"]
        seconds = time.perf_counter() - t
        timings[name].update(synth_s=seconds, images_per_s=written / seconds, labeled=rel(labeled))
    return sets, timings


def generation_quality(args, cfg: dict, sets: dict[str, dict[str, Path]], train_dir: Path, test_dir: Path
                       ) -> tuple[dict[str, dict], list[str]]:
    """KID, diversity and class fidelity of each set's crops against the real test crops of the same class."""
    from defectgen.detect.backbone import load_backbone
    from defectgen.evaluate.quality import class_fidelity, crop_features, diversity, kid, per_class_kid
    from defectgen.io.datasets import open_dataset

    net = load_backbone(args.backbone)
    ref_crops, ref_cls = crops_by_class(open_dataset(train_dir).select(normal=False), cfg["crop"])
    test_crops, test_cls = crops_by_class(open_dataset(test_dir).select(normal=False), cfg["crop"])
    ref_feats, test_feats = crop_features(net, ref_crops), crop_features(net, test_crops)
    classes = sorted(set(ref_cls))

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
    return table, classes


def _figure(sets: dict[str, dict[str, Path]], test_dir: Path, classes: list[str], path: Path) -> Path:
    """One column per class; rows: two real test defects, then two samples of each generator."""
    from defectgen.io.datasets import open_dataset
    from defectgen.io.images import write_image
    from defectgen.io.pictures import contact_sheet

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
             f"Detection: {', '.join(out.get('detectors') or ['seg'])} trained on each share of the train labels ("
             + ", ".join(f"{k}: {v} images" for k, v in out["labeled_images"].items()) + "), "
             "alone (`real`), with each generated set (`real+SET`) and on the set alone (`SET only`); "
             f"COCO box mAP@0.5 per class on the real test set (pycocotools), mean over {out.get('seeds', 1)} "
             "seed(s):", "",
             "| labels | run | real | synthetic | mAP@0.5 | mAP@[.5:.95] | agnostic mAP@0.5 | pixel AP | "
             + " | ".join(classes) + " |", "|---|---|---|---|---|---|---|---|" + "---|" * len(classes)]
    for pct, runs in out.get("detection", {}).items():
        for run, r in runs.items():
            lines.append(f"| {pct} | {run} | {r['real_images']} | {r['synthetic_images']} | {f(r['map50'])} | "
                         f"{f(r['map'])} | {f(r['agnostic_map50'])} | {f(r['pixel_ap'])} | "
                         + " | ".join(f(r["per_class_map50"].get(c)) for c in classes) + " |")
    pseudo = [(pct, run, r["pseudo"]) for pct, runs in out.get("detection", {}).items() for run, r in runs.items()
              if "pseudo" in r]
    if pseudo:
        lines += ["", "Pseudo-labels (`+pseudo` runs: the run's mean teacher labels the train images outside the "
                  "labeled share; regions kept after the confidence and backbone-feature checks):", "",
                  "| labels | run | unlabeled images | regions | kept | below confidence | not defect-like | "
                  "images used |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {pct} | {run} | {c['unlabeled_images']} | {c['regions']} | {c['kept']} | "
                  f"{c['dropped_confidence']} | {c['dropped_feature']} | {c['images_used']} |"
                  for pct, run, c in pseudo]
    for detector, comparison in out.get("comparisons", {}).items():
        lines += ["", f"Verdicts, {detector} ({out.get('seeds', 1)} seed(s); a win only beyond 2 SE; worth in real "
                  "defects on the real-only curve of the shares):", ""]
        lines += [f"- {line}" for line in comparison["lines"]]
    made = out.get("set_fractions") or out.get("fractions")
    share = f"{round(max(made) * 100)}%" if made else "the largest share"
    lines += ["", "KID against the real test crops of the same class (lower is better; 'real train' is the floor; "
              f"sets made with {share} of the labels):", "",
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
