"""The proof on real data: every generator against the classic baseline, on real defects, in one run.

On ../shared/datasets/magnetic-tile (the project's benchmark protocol, ../shared/DESIGN.md): train the unconditional
DDPM on train/good, the class- and mask-conditional DDPM and the text-guided LDM on labeled/, synthesize the same
number of defects with each, with the DRAEM-style baseline and with copy-paste of the real labeled defects, then
validate ExDD, AST and the supervised seg detector on test/ with every set. Baselines in the same runs: none (ExDD,
AST), the draem baseline on Perlin masks, and for seg `real` (labeled/ alone) and `real+SET` for every set (labeled/
plus the set: how a user would use a generated set). Also the generation-quality metrics of each set against the
real test defects (KID, diversity, realism).

    python benchmarks/proof.py --config smoke   # minutes: the chain runs end to end (numbers mean nothing)
    python benchmarks/proof.py --config cpu     # 2-core CPU, small models at 64 px, detectors at 128 px
    python benchmarks/proof.py --config gpu     # base presets at 256 px, detectors at 256 px

Results: benchmarks/results/proof_<config>.json (+ .md) with seeds, hardware and wall times; the work folder
(--work, default out/proof-<config>) keeps models, sets and reports, and a contact sheet of each generator's
samples beside real defects (proof_<config>_samples.png, also copied to benchmarks/results/).
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
    # Minutes: checks that the whole chain runs on the real data; its numbers mean nothing.
    "smoke": {"ddpm_preset": "tiny", "ddpm_res": 32, "ddpm_steps": 30, "ddpm_batch": 4, "ldm_res": 32,
              "ldm_vae_steps": 20, "ldm_steps": 20, "ldm_batch": 4, "n": 6, "sample_steps": 5,
              "det_res": 64, "max_train": 20, "coreset": 0.1, "ast_steps": 10, "ast_batch": 4},
    # Kept under an hour on 2 CPU cores: tiny models, short training, detectors at 128 px on a train subset.
    "cpu": {"ddpm_preset": "tiny", "ddpm_res": 64, "ddpm_steps": 800, "ddpm_batch": 8, "ldm_res": 64,
            "ldm_vae_steps": 300, "ldm_steps": 600, "ldm_batch": 8, "n": 60, "sample_steps": 25,
            "det_res": 128, "max_train": 200, "coreset": 0.05, "ast_steps": 200, "ast_batch": 8},
    "gpu": {"ddpm_preset": "base", "ddpm_res": 256, "ddpm_steps": 20000, "ddpm_batch": 32, "ldm_res": 256,
            "ldm_vae_steps": 5000, "ldm_steps": 10000, "ldm_batch": 16, "n": 200, "sample_steps": 50,
            "det_res": 256, "max_train": None, "coreset": 0.1, "ast_steps": 2000, "ast_batch": 16},
}
METRICS = ("image_auroc", "pixel_auroc", "aupro", "pixel_ap")
HEADLINE = ("pixel_ap", "aupro", "image_auroc")  # verdicts on these; worth in real defects by the first
BASELINE_RUNS = ("real", "none", "draem (Perlin masks, baseline)", "copypaste", "real+copypaste")


def compare_sets(runs: dict, sets: dict) -> dict:
    """The paired verdicts of every generator's runs (the set alone, real+set) against every baseline run (the same
    seeds in every validate call, so the baselines of the first call pair with the sets of the later ones), and the
    worth in real defects of every run with real defects on the first call's real-only curve."""
    from defectgen.evaluate.compare import METRIC_NAMES, verdicts, worth

    set_runs = [k for k in runs if k in sets or (k.startswith("real+") and k.removeprefix("real+") in sets)]
    pairs = [(a, b) for a in set_runs for b in BASELINE_RUNS if b in runs and b != a]
    judged = verdicts(runs, HEADLINE, pairs=pairs)
    worths = worth(runs, HEADLINE[0])
    return {"verdicts": [p.to_json() for p in judged], "worth": [w.to_json() for w in worths],
            "lines": [p.line(METRIC_NAMES[p.metric]) for p in judged] + [w.line() for w in worths]}




def run_key(name: str, run: str, masks: str) -> str:
    """The proof's name for run `run` of the validate call that held set `name`."""
    if run == "synthetic":  # draem on the same masks as the diffusion sets, beside the built-in draem baseline
        return f"{name} ({masks} masks)" if name == "draem" else name
    if run == "real+synthetic":
        return f"real+{name}"
    return "draem (Perlin masks, baseline)" if run == "draem" else run


def main() -> None:
    parser = proof_parser(__doc__, CONFIGS, "magnetic-tile", "ddpm,cddpm,ldm,draem,copypaste")
    parser.add_argument("--transplant-strength", type=float, default=0.5,
                        help="transplant-ddpm, transplant-cddpm: t0/T of the SDEdit pass over the pasted defect")
    parser.add_argument("--transplant-blend", choices=("paste", "seamless"), default="paste",
                        help="transplant-*: how the real defect is pasted before the SDEdit pass (seamless: "
                        "Poisson blending)")
    parser.add_argument("--transplant-sampler", choices=("ddim", "ddpm", "dpm"), default="ddim",
                        help="transplant-*: the reverse process of the SDEdit pass")
    parser.add_argument("--transplant-augment", choices=("full", "flips"), default="flips",
                        help="transplant-*: the pasted defect's augmentation (see copypaste)")
    parser.add_argument("--transplant-keep-core", type=float, default=None,
                        help="transplant-*: keep the pasted pixels in this share of each defect's depth (None: "
                        "the model re-draws the whole mask)")
    parser.add_argument("--detectors", default="exdd,ast,seg")
    parser.add_argument("--seeds", type=int, default=1, help="every detector run with this many seeds: mean ± std "
                        "and paired verdicts of each set against each baseline")
    parser.add_argument("--curve", default=None, help="shares of labeled/ for the real-only learning curve, as "
                        "0.25,0.5,1.0: every run with real defects gets its worth in real defects (every detector)")
    parser.add_argument("--masks", choices=("perlin", "real"), default="perlin",
                        help="perlin: random Perlin blobs; real: the labeled defects' masks, class-matched")
    parser.add_argument("--strength", type=float, default=None, help="unconditional DDPM: t0/T (default 0.5)")
    parser.add_argument("--positive-quantile", type=float, default=None,
                        help="ExDD: drop synthetic patches the normal bank explains (see ExDD; default off: "
                        "ExDD exactly as DESIGN.md defines it; `defectgen validate` uses 0.999)")
    args = parser.parse_args()
    cfg = proof_settings(CONFIGS, args)
    work = args.work or ROOT / "out" / f"proof-{args.config}"
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    from defectgen.diffusion.train_ddpm import train_ddpm
    from defectgen.diffusion.train_ldm import train_ldm
    from defectgen.masks.real import RealMasks
    from defectgen.prompts import PROMPT_DIR
    from defectgen.synth.options import SynthesisOptions
    from defectgen.synth.pipeline import load_generator, synthesize

    good, labeled = args.data / "train" / "good", args.data / "labeled"
    generators = [g.strip() for g in args.generators.split(",") if g.strip()]
    timings: dict[str, dict] = {}
    models: dict[str, Path] = {}

    def reused(name: str) -> bool:
        record = reusable_model(work / name, args.reuse)
        if record:
            models[name], timings[name] = work / name, record
        return record is not None

    precision = proof_precision(args)

    def train_cfg(steps, batch, lr):
        return proof_train_config(steps, batch, lr, args.seed, precision)

    def trained(seconds: float, steps: int, variant: dict | None = None) -> dict:
        return {"train_s": seconds, "steps": steps, "mixed_precision": precision, **(variant or {})}

    # the harmonized transplants re-draw pasted real defects with the DDPMs trained here
    wanted = set(generators) | {g.removeprefix("transplant-") for g in generators if g.startswith("transplant-")}
    if "ddpm" in wanted and not reused("ddpm"):
        t = time.perf_counter()
        train_ddpm(work / "ddpm", good, preset=cfg["ddpm_preset"], resolution=cfg["ddpm_res"], crop="random",
                   context=args.ddpm_context, config=train_cfg(cfg["ddpm_steps"], cfg["ddpm_batch"], 5e-4),
                   overwrite=True)
        models["ddpm"] = work / "ddpm"
        timings["ddpm"] = trained(time.perf_counter() - t, cfg["ddpm_steps"], ddpm_variant(args, conditional=False))
    if "cddpm" in wanted and not reused("cddpm"):
        t = time.perf_counter()
        train_ddpm(work / "cddpm", good, labeled, preset=cfg["ddpm_preset"], resolution=cfg["ddpm_res"],
                   crop="random", context=args.ddpm_context, target=args.ddpm_target,
                   config=train_cfg(cfg["ddpm_steps"], cfg["ddpm_batch"], 5e-4), overwrite=True)
        models["cddpm"] = work / "cddpm"
        timings["cddpm"] = trained(time.perf_counter() - t, cfg["ddpm_steps"], ddpm_variant(args))
    if "ldm" in generators and not reused("ldm"):
        t = time.perf_counter()
        tok = args.tokenizer if Path(args.tokenizer).is_dir() else None
        train_ldm(labeled, work / "ldm", config=train_cfg(cfg["ldm_steps"], cfg["ldm_batch"], 2e-4), base="tiny",
                  preset="tiny" if args.config == "cpu" else "small", prompts=PROMPT_DIR / "tile.yaml",
                  resolution=cfg["ldm_res"], tokenizer=tok, vae_steps=cfg["ldm_vae_steps"], overwrite=True)
        models["ldm"] = work / "ldm"
        timings["ldm"] = trained(time.perf_counter() - t, cfg["ldm_steps"])
    variants = {"copypaste": {}, "copypaste-seamless": {"blend": "seamless"}, "copypaste-flips": {"augment": "flips"}}
    for name in ("draem", *variants):  # generators without a model to train (the variants are copypaste's)
        if name in generators:
            models[name] = Path("copypaste" if name in variants else name)
            timings[name] = {"train_s": 0.0}
    transplant = {"strength": args.transplant_strength, "blend": args.transplant_blend,
                  "sampler": args.transplant_sampler, "keep_core": args.transplant_keep_core,
                  "augment": args.transplant_augment}
    for name in ("transplant-ddpm", "transplant-cddpm"):
        if name in generators:
            models[name] = models[name.removeprefix("transplant-")]
            timings[name] = {**timings[name.removeprefix("transplant-")], **transplant}
            timings[name].pop("reused", None)

    sets: dict[str, Path] = {}
    suffix = f"-{args.tag}" if args.tag else ""
    masks = RealMasks(args.data, seed=args.seed) if args.masks == "real" else "perlin"  # read the labeled set once
    for name in ("ddpm", "cddpm", "ldm", "draem", *variants, "transplant-ddpm", "transplant-cddpm"):
        if name not in models or name not in generators:  # a fixed order, whichever were reused
            continue
        options = {"steps": cfg["sample_steps"], "sampler": "ddim" if name.endswith("-ddpm") or name == "ddpm"
                   else "dpm"}
        if name == "ddpm" and args.strength is not None:
            options["strength"] = args.strength
        if name == "cddpm" and args.guidance is not None:
            options["guidance"] = args.guidance
            timings[name]["guidance"] = args.guidance
        if name.startswith("transplant-"):
            options.update(labeled=labeled, **transplant)
        if name in variants:
            options = {"labeled": labeled, **variants[name]}
        generator = load_generator(str(models[name]), **options)
        t = time.perf_counter()
        # copy-paste and the transplants bring the real defects' masks
        own_masks = "perlin" if name in variants or name.startswith("transplant-") else masks
        result = synthesize(generator, good, work / f"synth-{name}{suffix}", cfg["n"],
                            SynthesisOptions(masks=own_masks, seed=args.seed, batch_size=8, overwrite=True,
                                             progress=sys.stderr.isatty()),
                            log=lambda *_: None)
        seconds = time.perf_counter() - t
        timings[name].update(synth_s=seconds, images_per_s=cfg["n"] / seconds, annotations=result.annotations)
        sets[name] = work / f"synth-{name}{suffix}"

    from defectgen.evaluate.quality import quality_report

    quality = {}
    for name, folder in sets.items():
        quality[name] = quality_report(folder, args.data, backbone=args.backbone, resolution=cfg["det_res"],
                                       seed=args.seed)

    from defectgen.evaluate import ValidationConfig, run_validation
    from defectgen.evaluate.compare import RunSeeds

    curve = [float(v) for v in args.curve.split(",")] if args.curve else None
    table: dict[str, dict] = {}
    seeded: dict[str, dict[str, RunSeeds]] = {}
    for detector in [d.strip() for d in args.detectors.split(",") if d.strip()]:
        first = True
        for name, folder in sets.items():
            seg = detector == "seg"
            with_real = seg or curve is not None or args.sets_only  # curves need the real baselines
            if name == "draem" and args.masks == "perlin" and not seg:
                continue  # the same as the draem baseline that runs inside run_validation, on the same count
            if args.sets_only:  # paired later with a full proof's baselines (compute_curve.py)
                baselines = ("real+synthetic",)
            elif first:
                baselines = ("real", "draem", "real+synthetic") if seg else \
                    ("none", "draem") + (("real", "real+synthetic") if with_real else ())
            else:
                baselines = ("real+synthetic",) if with_real else ()
            res = run_validation(ValidationConfig(
                detector, args.data, args.data, work / f"report-{detector}-{name}{suffix}", synthetic=folder,
                baselines=baselines, real_labeled=labeled if with_real else None, backbone=args.backbone,
                resolution=cfg["det_res"],
                seed=args.seed, steps=cfg["ast_steps"], batch_size=cfg["ast_batch"], coreset_ratio=cfg["coreset"],
                n_draem=cfg["n"], max_train=cfg["max_train"], overwrite=True, progress=sys.stderr.isatty(),
                positive_quantile=args.positive_quantile, seeds=args.seeds,
                curve=curve if first and not args.sets_only else None,
            ))
            for run, values in res["runs"].items():
                key = run_key(name, run, args.masks)
                table.setdefault(detector, {})[key] = {m: values["metrics"].get(m) for m in METRICS}
                table[detector][key]["std"] = {m: v["std"] for m, v in values.get("spread", {}).items()}
                table[detector][key]["per_class"] = values.get("per_class")
                seeded.setdefault(detector, {})[key] = RunSeeds.from_record(values, HEADLINE)
            first = False
    comparisons = {d: compare_sets(runs, sets) for d, runs in seeded.items()}

    samples_png = _figure(sets, args.data, work / f"proof_{args.config}{suffix}_samples.png")

    for q in quality.values():
        q.update(generated=rel(q["generated"]), real=rel(q["real"]), backbone=rel(q["backbone"]))
    out = {
        "benchmark": "proof", "config": args.config, "tag": args.tag, "masks": args.masks,
        "ddpm_strength": args.strength, "positive_quantile": args.positive_quantile,
        "settings": cfg, "seed": args.seed, "data": rel(args.data),
        "backbone": rel(args.backbone), **provenance(), "wall_time_s": time.perf_counter() - started,
        "generation": timings, "quality": quality, "detectors": table, "seeds": args.seeds, "curve": curve,
        "comparisons": comparisons, "sets_only": args.sets_only, "seeded": seeded_json(seeded),
        "command": command_line("benchmarks/proof.py", sys.argv[1:]),
    }
    write_results(f"proof_{args.config}{suffix}", out, markdown(out), samples_png)


def _figure(sets: dict[str, Path], data: Path, path: Path) -> Path:
    """Rows: real test defects, then each generator's samples, with mask outlines."""
    from defectgen.io.datasets import open_dataset
    from defectgen.io.images import write_image
    from defectgen.io.pictures import contact_sheet

    rows = []
    real = open_dataset(data).select(split="test", normal=False)
    pick = np.random.default_rng(0).choice(len(real), 8, replace=False)
    rows.append(contact_sheet([real[int(i)] for i in sorted(pick)], tile=128, columns=8))
    for name, folder in sets.items():
        ds = open_dataset(folder)
        samples = [ds[i] for i in range(min(8, len(ds)))]
        for s in samples:
            s.class_name = name
        rows.append(contact_sheet(samples, tile=128, columns=8))
    write_image(path, stack_rows(rows))
    return path


def markdown(out: dict) -> str:
    f = fmt
    lines = [f"Proof ({out['config']} config, seed {out['seed']}, {out['hardware']['cpu']}"
             f"{', ' + out['hardware']['gpu'] if out['hardware'].get('gpu') else ''}; wall time "
             f"{out['wall_time_s'] / 60:.1f} min)", "",
             f"Masks: {out.get('masks', 'perlin')}; DDPM strength: {out.get('ddpm_strength') or 'default'}; "
             f"ExDD positive quantile: {out.get('positive_quantile')}", "",
             "| generator | detector | I-AUROC | P-AUROC | AUPRO@0.3 | pixel AP |", "|---|---|---|---|---|---|"]
    for detector, runs in out["detectors"].items():
        for name, m in runs.items():
            std = m.get("std") or {}
            lines.append(f"| {name} | {detector} | " + " | ".join(
                f(m.get(k)) + (f" ± {std[k]:.3f}" if std.get(k) is not None else "") for k in METRICS) + " |")
    for detector, comparison in out.get("comparisons", {}).items():
        lines += ["", f"Verdicts, {detector} ({out.get('seeds', 1)} seed(s); a win only beyond 2 SE):", ""]
        lines += [f"- {line}" for line in comparison["lines"]]
    lines += ["", "| generator | train s | images/s | KID | diversity | realism I-AUROC | realism P-AUROC |",
              "|---|---|---|---|---|---|---|"]
    for name, t in out["generation"].items():
        if name not in out["quality"]:  # a model trained only for a transplant: its own set was not asked for
            continue
        q = out["quality"][name]
        r = q.get("realism", {})
        train = "reused" if t.get("train_s") is None else f"{t['train_s']:.0f}"
        lines.append(f"| {name} | {train} | {f(t.get('images_per_s'))} | {f(q.get('kid'))} | "
                     f"{f(q.get('diversity'))} | {f(r.get('image_auroc'))} | {f(r.get('pixel_auroc'))} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
