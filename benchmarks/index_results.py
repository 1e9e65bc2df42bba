"""Index of benchmarks/results/: one record per result family, written to results/index.json and results/INDEX.md,
and the current headline figure per dataset and detector, written to results/RESULTS.md.

Reads every JSON under results/ (stdlib only), groups the files by the hand-written FAMILIES below (benchmark and
tag pattern, matched with or without the `history/` prefix), takes `commit`, `date` and `hardware` from the JSONs,
and computes each family's headline figure from its JSON. The status of a family (current / superseded / ablation)
and what supersedes it are written here by hand; superseded results live under results/history/. HEADLINES names
the family that holds the current figure of each dataset and detector. benchmarks/README.md holds the full tables.

    python benchmarks/index_results.py
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
HISTORY = "history"  # superseded results, under results/


def _f(x: float) -> str:
    return f"{x:.3f}"


def _mean_std(curve: dict, share: str) -> str:
    point = curve["per_share"][share]
    return f"{point['mean']:.3f} ± {point['std']:.3f}"


def _four(m: dict) -> str:
    return " / ".join(_f(m[k]) for k in ("image_auroc", "pixel_auroc", "aupro", "pixel_ap"))


def _neu_curve(name: str) -> Callable[[dict[str, dict]], str]:
    def headline(d: dict[str, dict]) -> str:
        c = d[name]["curves"]["map50"]
        return (f"det NEU-DET mAP@0.5, {len(d[name]['seeds'])} seeds: 20% {_mean_std(c, '0.2')}, "
                f"40% {_mean_std(c, '0.4')}, 100% {_mean_std(c, '1')}; each step beyond 2 SE: "
                f"{all(s['beyond_two_se'] for s in c['steps'])}")
    return headline


def _neu_det_proof(d: dict[str, dict]) -> str:
    """det's real-only curve and each set at the shares it ran, mean ± std over seeds, and the worth lines."""
    out = d["proof_neu_cpu-det-3seeds.json"]
    parts = []
    for pct, rows in out["detection"].items():
        for key, r in rows.items():
            if key.startswith("det: ") and (key == "det: real" or pct == f"{round(max(out['set_fractions']) * 100)}%"):
                std = f" ± {r['map50_std']:.3f}" if r.get("map50_std") is not None else ""
                parts.append(f"{pct} {key[5:]} {r['map50']:.3f}{std}")
    worth = [line for line in out["comparisons"]["det"]["lines"] if "worth" in line or "below" in line]
    return f"det mAP@0.5, {out['seeds']} seeds, {out['settings']['det_res']} px: " + ", ".join(parts) + (
        "; " + "; ".join(worth) if worth else "")


def _mt_proof(name: str, detector: str, metric: str = "pixel_ap") -> Callable[[dict[str, dict]], str]:
    """magnetic-tile's proof with seeds: each run's `metric` as mean ± std, then the worth lines."""
    def headline(d: dict[str, dict]) -> str:
        out = d[name]
        runs = out["detectors"][detector]
        parts = [f"{run} {r[metric]:.3f}" + (f" ± {r['std'][metric]:.3f}" if (r.get("std") or {}).get(metric)
                                             is not None else "") for run, r in runs.items()]
        worth = [line for line in out["comparisons"][detector]["lines"] if "worth" in line or "below" in line]
        return (f"{detector} {metric}, {out['seeds']} seeds, {out['settings']['det_res']} px: " + ", ".join(parts)
                + ("; " + "; ".join(worth) if worth else ""))
    return headline


def _neu_seg_curve(d: dict[str, dict]) -> str:
    c = d["learning_curve_neu-det_seg_cpu-128.json"]["curves"]
    ap, box = c["pixel_ap"], c["map50"]
    return (f"seg NEU-DET, 3 seeds, 128 px, pixel AP: 20% {_mean_std(ap, '0.2')}, 40% {_mean_std(ap, '0.4')}, "
            f"100% {_mean_std(ap, '1')} (rises beyond 2 SE: {ap['rises']}); box mAP@0.5 (boxes cut from maps): "
            f"20% {_mean_std(box, '0.2')}, 40% {_mean_std(box, '0.4')}, 100% {_mean_std(box, '1')} "
            f"(rises: {box['rises']})")


def _mt_curve(d: dict[str, dict]) -> str:
    c = d["learning_curve_magnetic-tile_seg_cpu.json"]["curves"]
    ap, pro = c["pixel_ap"], c["aupro"]
    return (f"seg magnetic-tile pixel AP, 3 seeds: 25% {_mean_std(ap, '0.25')}, 50% {_mean_std(ap, '0.5')}, "
            f"100% {_mean_std(ap, '1')} (each step beyond 2 SE: {ap['rises']}); AUPRO rises: {pro['rises']}")


def _det_heads(d: dict[str, dict]) -> str:
    c = d["det_neu_cpu-heads-fcos.json"]["coco"]
    return f"FCOS, all labels, one seed, Intel Xeon: mAP@0.5 {_f(c['map50'])} (did not reproduce det-neu's 0.597)"


def _box_heads(d: dict[str, dict]) -> str:
    parts = []
    for _, r in sorted(d.items()):
        t = r.get("training", {})
        parts.append(f"{r['args']['box_head']} {_f(r['coco']['map50'])} / {_f(r['coco']['map'])} "
                     f"({t.get('epochs')} epochs, {r['fit_seconds']:.0f} s)")
    sizes = sorted({r["args"].get("size") for r in d.values()})
    return (f"mAP@0.5 / mAP@[.5:.95], 40% of the labels, one seed, {'/'.join(map(str, sizes))} px: "
            + ", ".join(parts))


def _det_neu(d: dict[str, dict]) -> str:
    c = d["det_neu_cpu-full.json"]["coco"]
    return f"det NEU-DET, all labels, one seed: mAP@0.5 {_f(c['map50'])}, mAP@[.5:.95] {_f(c['map'])}"


def _proof_final(d: dict[str, dict]) -> str:
    seg = d["proof_cpu-final-exdd-seg.json"]["detectors"]["seg"]
    exdd = d["proof_cpu-final-exdd-seg.json"]["detectors"]["exdd"]
    return (f"seg pixel AP / AUPRO: real {_f(seg['real']['pixel_ap'])} / {_f(seg['real']['aupro'])}, "
            f"real+cddpm {_f(seg['real+cddpm']['pixel_ap'])} / {_f(seg['real+cddpm']['aupro'])}, "
            f"real+copypaste-flips {_f(seg['real+copypaste-flips']['pixel_ap'])} / "
            f"{_f(seg['real+copypaste-flips']['aupro'])}; ExDD none I-AUROC {_f(exdd['none']['image_auroc'])}")


def _proof_seed1(d: dict[str, dict]) -> str:
    exdd = d["proof_cpu-final-exdd-seed1.json"]["detectors"]["exdd"]
    best = max((r for r in exdd if r != "none"), key=lambda r: exdd[r]["aupro"])
    return (f"ExDD seed 1 AUPRO: none {_f(exdd['none']['aupro'])}, best set ({best}) {_f(exdd[best]['aupro'])}: "
            "no set beats none")


def _kid_realism(d: dict[str, dict], name: str, gen: str = "transplant-ddpm") -> str:
    q = d[name]["quality"][gen]
    return f"{gen} KID {q['kid']:.2f}, realism {_f(q['realism']['image_auroc'])} / {_f(q['realism']['pixel_auroc'])}"


def _ablation(d: dict[str, dict]) -> str:
    best = "proof_cpu-ablation-transplant-flips-core1-s0.2.json"
    return "best: flips, keep-core 1, strength 0.2: " + _kid_realism(d, best)


def _keepcore(d: dict[str, dict]) -> str:
    return ("keep-core 0: " + _kid_realism(d, "proof_cpu-transplant-core0.5-s0.2.json") + "; copypaste seamless: "
            + _kid_realism(d, "proof_cpu-transplant-seamless-s0.2.json", "copypaste-seamless"))


def _strength(d: dict[str, dict]) -> str:
    kids = {n.split("-s")[-1][:-5]: d[n]["quality"]["transplant-ddpm"]["kid"] for n in d
            if "transplant-ddpm" in d[n]["quality"]}
    return "transplant-ddpm KID by strength: " + ", ".join(f"{s} {k:.2f}" for s, k in sorted(kids.items()))


def _transplant_detect(d: dict[str, dict]) -> str:
    ex = d["proof_cpu-transplant-ddpm-s0.2-detect.json"]["detectors"]["exdd"]
    return f"ExDD transplant-ddpm {_four(ex['transplant-ddpm'])} vs none {_four(ex['none'])}"


def _proof_all(d: dict[str, dict]) -> str:
    seg = d["proof_cpu-all-real-masks-q999.json"]["detectors"]["seg"]
    return (f"seg (square 128 px) real {_four(seg['real'])}, real+cddpm {_four(seg['real+cddpm'])}, "
            f"real+ldm {_four(seg['real+ldm'])}")


def _proof_seg(d: dict[str, dict]) -> str:
    seg = d["proof_cpu-seg-real-masks-q999.json"]["detectors"]["seg"]
    return f"seg real {_four(seg['real'])}"


def _proof_first(d: dict[str, dict]) -> str:
    ex = d["proof_cpu-real-masks-q999.json"]["detectors"]["exdd"]
    first = d["proof_cpu.json"]["detectors"]["exdd"]
    return (f"ExDD cddpm: {_four(first['cddpm'])} (Perlin, no filter) -> {_four(ex['cddpm'])} "
            "(real masks, filter 0.999)")


def _realism(d: dict[str, dict]) -> str:
    s = d["realism_controls_cpu.json"]["sets"]
    return (f"realism I-AUROC: real labeled {_f(s['real (labeled/)']['filtered']['image_auroc'])}, "
            f"no-op {_f(s['no-op']['filtered']['image_auroc'])}")


def _neu_quality(d: dict[str, dict]) -> str:
    parts = []
    for name, label in (("proof_neu_cpu.json", "DPM-Solver"), ("proof_neu_cpu-ddim.json", "DDIM")):
        q = d[name]["quality"]
        parts.append(f"{label}: cddpm pooled KID {q['cddpm']['kid']:.1f} (draem {q['draem']['kid']:.1f})")
    return "; ".join(parts)


def _neu_detect(d: dict[str, dict]) -> str:
    det = {**d["proof_neu_cpu-diffusion-20.json"]["detection"], **d["proof_neu_cpu-diffusion-40-100.json"]["detection"]}
    return "seg mAP@0.5 real / cddpm only: " + ", ".join(
        f"{share} {_f(runs['real']['map50'])} / {_f(runs['cddpm only']['map50'])}" for share, runs in det.items())


def _neu_semi(d: dict[str, dict]) -> str:
    det = d["proof_neu_cpu-semi.json"]["detection"]
    return "seg mAP@0.5 real / real+pseudo: " + ", ".join(
        f"{share} {_f(runs['real']['map50'])} / {_f(runs['real+pseudo']['map50'])}" for share, runs in det.items())


def _neu_seg(d: dict[str, dict]) -> str:
    det = d["proof_neu_cpu-seg.json"]["detection"]
    return "seg mAP@0.5 real: " + ", ".join(f"{share} {_f(runs['real']['map50'])}" for share, runs in det.items())


def _mt_aspect(d: dict[str, dict]) -> str:
    own = d["magnetic_tile_cpu_res128.json"]["results"]["exdd"]["runs"]["none"]["metrics"]
    sq = d["magnetic_tile_cpu_res128x128.json"]["results"]["exdd"]["runs"]["none"]["metrics"]
    return f"ExDD none AUPRO: own aspect {_f(own['aupro'])}, square {_f(sq['aupro'])}"


def _mt_256(d: dict[str, dict]) -> str:
    r = d["magnetic_tile_cpu.json"]["results"]["exdd"]["runs"]
    return (f"ExDD I-AUROC: none {_f(r['none']['metrics']['image_auroc'])}, "
            f"draem {_f(r['draem']['metrics']['image_auroc'])}")


def _diffusion_features(d: dict[str, dict]) -> str:
    runs = d["diffusion_features_cpu.json"]["runs"]
    return "ExDD none AUPRO by backbone: " + ", ".join(
        f"{_backbone(r['backbone'])} {_f(r['metrics']['aupro'])}" for r in runs if r["detector"] == "exdd")


def _backbone(spec: str) -> str:
    return "+".join("MobileNetV2" if "mobilenet" in part else "DDPM" for part in spec.split("+"))


def _cached(d: dict[str, dict]) -> str:
    r = d["cached_heads_cpu.json"]["results"]
    return f"step speed-up from cached maps: seg {r['seg']['speedup']:.1f}x, det {r['det']['speedup']:.1f}x"


def _coreset(d: dict[str, dict]) -> str:
    r = d["coreset_speed_cpu.json"]["runs"]
    return f"greedy coreset of 320,000 patches: {r['old']['seconds']:.0f} s -> {r['new']['seconds']:.0f} s, same radius"


def _large(d: dict[str, dict]) -> str:
    t, n = d["large_images_cpu.json"], d["large_images_native_cpu.json"]
    return (f"2000x800 ExDD peak RSS: tiles {t['peak_rss_mib']:.0f} MiB ({t['wall_s']:.0f} s), "
            f"whole image {n['peak_rss_mib']:.0f} MiB ({n['wall_s']:.0f} s)")


def _ddpm(d: dict[str, dict]) -> str:
    r = d["ddpm_throughput_cpu_tiny.json"]["results"]["64"]
    return (f"tiny DDPM 64 px: training {r['train_defectgen']['images_per_s']:.2f} images/s, "
            f"DPM-Solver-20 sampling {r['sampling']['dpm-20']['images_per_s']:.2f} images/s")


def _ddpm_conditional(d: dict[str, dict]) -> str:
    before = d["ddpm_throughput_cpu_conditional_before.json"]["results"]
    after = d["ddpm_throughput_cpu_conditional_after.json"]["results"]
    ref, old = before["reference (diffusers example loop)"], before["defectgen: proof settings"]
    rate = {k.removeprefix("defectgen: "): v["images_per_s"] for k, v in after.items()}
    curve = d["ddpm_throughput_cpu_conditional_bf16-loss-300.json"]["results"]
    fp32, bf16 = curve["defectgen: proof settings"]["loss_curve"], curve["defectgen: bf16"]["loss_curve"]
    gap = max(abs(a - b) for a, b in zip(fp32, bf16, strict=True))
    return (f"conditional DDPM, tiny, 64 px, batch 8, images/s: before {old['images_per_s']:.1f} (reference "
            f"{ref['images_per_s']:.1f}); after: fp32 {rate['proof settings']:.1f}, channels_last "
            f"{rate['channels_last']:.1f}, bf16 {rate['bf16']:.1f} ({rate['bf16'] / old['images_per_s']:.2f}x before, "
            f"reference {after['reference (diffusers example loop)']['images_per_s']:.1f} in the same run); bf16's "
            f"loss curve within {gap:.4f} of fp32's over 300 steps")


def _compute_curve(d: dict[str, dict]) -> str:
    """Per file and detector, each point's gain of real+SET over real alone and its training minutes."""
    parts = []
    for _, out in sorted(d.items()):
        if out.get("benchmark") != "compute_curve":
            continue
        for detector, r in out["detectors"].items():
            points = [f"{g}@{p['steps']} ({p['train_minutes']:.0f} min) {p['gain_over_real']['mean']:+.3f} ± "
                      f"{p['gain_over_real']['std']:.3f}" for g, line in r["lines"].items() for p in line
                      if p["gain_over_real"] and p["train_minutes"] is not None]
            cp = r["bands"]["copypaste"]["gain_over_real"]
            band = f"; copy-paste {cp['mean']:+.3f} ± {cp['std']:.3f}" if cp else ""
            parts.append(f"{out['tag']} {detector} {r['metric']}, real+set − real: " + ", ".join(points) + band)
    return "; ".join(parts)


def _split_overlap(d: dict[str, dict]) -> str:
    parts = []
    for _, out in sorted(d.items()):
        t = out["test_to_labeled"]
        parts.append(f"{out['tag']}: {t['below']['0.05']:.0%} of {out['test_defects']} test defects within 0.05 of a "
                     f"labeled one (median {t['median']:.3f}); generated sets' medians "
                     + ", ".join(f"{n} {s['median']:.3f}" for n, s in out["sets"].items()))
    return "; ".join(parts)


def _pair_runs(d: dict[str, dict]) -> str:
    parts = []
    for _, out in sorted(d.items()):
        first = out["verdicts"][0]["metric"]  # the first metric of each pair: mAP@0.5 or pixel AP
        parts.append(f"{out['tag']} ({out['detector']}, {first}): " + ", ".join(
            f"{v['run']} − {v['baseline']} {v['mean']:+.3f} ± {v['std']:.3f} ({v['verdict']})"
            for v in out["verdicts"] if v["metric"] == first))
    return "; ".join(parts)


def _det_repro(d: dict[str, dict]) -> str:
    seeded = next(iter(d.values()))["seeded"]["det"]
    return "; ".join(f"{run} mAP@0.5 per seed " + ", ".join(f"{v:.6f}" for v in s["values"]["map50"])
                     for run, s in seeded.items())


# (id, benchmark, what it measures, file patterns, status, superseded by, note, headline)
FAMILIES: list[tuple[str, str, str, list[str], str, str | None, str, Callable[[dict], str]]] = [
    ("learning-curve-neu-det", "learning_curve", "real-only learning curve of det on NEU-DET, 3 seeds",
     ["learning_curve_neu-det_det_cpu.json"], "current", None, "", _neu_curve("learning_curve_neu-det_det_cpu.json")),
    ("proof-neu-det", "proof_neu", "NEU-DET: det with 3 seeds, real-only at 20/40/100% and generated sets at 20%, "
     "paired verdicts and worth in real defects", ["proof_neu_cpu-det-3seeds.json"], "current", None, "",
     _neu_det_proof),
    ("learning-curve-neu-det-warmup-only", "learning_curve", "the det curve with warm-up, before the regression bias "
     "fix", ["learning_curve_neu-det_det_cpu-warmup-only.json"], "superseded", "proof-neu-det",
     "seed 1 at 100% died (mAP 0.000): FCOS's ReLU regression; fixed by a positive bias",
     _neu_curve("learning_curve_neu-det_det_cpu-warmup-only.json")),
    ("learning-curve-neu-det-no-warmup", "learning_curve", "the same curve before det's learning-rate warm-up (AMD)",
     ["learning_curve_neu-det_det_cpu-nowarmup.json"], "superseded", "learning-curve-neu-det",
     "without warm-up FCOS's training depended on rounding: the same code gave 0.089 at 100% on an Intel machine",
     _neu_curve("learning_curve_neu-det_det_cpu-nowarmup.json")),
    ("proof-mt-seg-3seeds", "proof", "magnetic-tile: seg with 3 seeds, the real-only curve at 25/50/100% of labeled/, "
     "the conditional DDPM's and copy-paste's sets, paired verdicts and worth in real defects",
     ["proof_cpu-seg-3seeds.json"], "current", None, "", _mt_proof("proof_cpu-seg-3seeds.json", "seg")),
    ("compute-curve", "compute_curve", "the generators' value against their training compute: the conditional "
     "DDPM at 800 / 3200 / 12800 steps, the transplant that re-draws real defects with it, the LDM, and the push "
     "ablations (guidance, raw weights against EMA, wider windows), paired with the 3-seed proofs' baselines",
     ["compute_curve_*.json", "proof_cpu-cddpm-*.json", "proof_neu_cpu-cddpm-*.json",
      "proof_cpu-transplant-cddpm-*.json", "proof_neu_cpu-transplant-cddpm-*.json", "proof_neu_cpu-ldm-*.json",
      "proof_cpu-ldm-*.json"],
     "current", None,
     "proof_*-cddpm-*: sets-only proofs (the points); compute_curve_*: the verdicts and plots", _compute_curve),
    ("det-repro", "proof", "NEU-DET: det run again on one machine with the same seeds and set (copy-paste), to read "
     "whether a rerun reproduces the earlier run's values", ["proof_neu_cpu-det-repro.json"], "current", None,
     "compare its seeded values with proof_neu_cpu-cddpm-800-rerun (same machine): equal to six digits",
     _det_repro),
    ("pair-runs", "pair_runs", "paired verdicts between runs of different proofs: a rerun on another machine against "
     "its reference, a new set against a baseline run again beside it", ["pair_runs_*.json"], "current", None, "",
     _pair_runs),
    ("split-overlap-mt", "split_overlap", "magnetic-tile: each test defect's distance to its nearest labeled defect "
     "(the same tile under other exposures), generated sets for scale", ["split_overlap_*.json"], "current", None,
     "", _split_overlap),
    ("proof-mt-exdd-3seeds", "proof", "magnetic-tile: ExDD with 3 seeds, the real-only curve at 25/50/100% of "
     "labeled/, the conditional DDPM's and copy-paste's sets, paired verdicts and worth in real defects",
     ["proof_cpu-exdd-3seeds.json"], "current", None, "", _mt_proof("proof_cpu-exdd-3seeds.json", "exdd")),
    ("learning-curve-neu-det-seg", "learning_curve", "real-only learning curve of seg on NEU-DET, 3 seeds, 128 px",
     ["learning_curve_neu-det_seg_cpu-128.json"], "current", None, "", _neu_seg_curve),
    ("learning-curve-magnetic-tile", "learning_curve", "real-only learning curve of seg on magnetic-tile, 3 seeds",
     ["learning_curve_magnetic-tile_seg_cpu.json"], "current", None, "", _mt_curve),
    ("det-neu-box-heads-128", "det_neu", "det's three box heads on NEU-DET at 128 px (FCOS, RetinaNet, Faster "
     "R-CNN), 40% of the labels", ["det_neu_cpu-heads-40-128-*.json"], "current", None,
     "one seed: a first look, not a verdict", _box_heads),
    ("det-neu-box-heads", "det_neu", "det's box heads on NEU-DET at 224 px (FCOS, RetinaNet; Faster R-CNN stopped)",
     ["det_neu_cpu-heads-40-*.json"], "current", None, "one seed: a first look, not a verdict", _box_heads),
    ("det-neu-heads", "det_neu", "det on NEU-DET on 2026-12-02's machine; the box-head comparison stopped after FCOS",
     ["det_neu_cpu-heads-*.json"], "superseded", "learning-curve-neu-det",
     "explained: no learning-rate warm-up (FCOS's box regression died under its ReLU); fixed", _det_heads),
    ("det-neu", "det_neu", "det (FCOS) on NEU-DET with all train labels, one seed",
     ["det_neu_cpu-full.json"], "superseded", "learning-curve-neu-det", "no warm-up; one seed", _det_neu),
    ("proof-final", "proof", "magnetic-tile: every defect source under ExDD, seg and AST, own-aspect code, seed 0",
     ["proof_cpu-final-exdd-seg.json", "proof_cpu-final-ast.json"], "current", None, "", _proof_final),
    ("proof-seed1", "proof", "magnetic-tile: the final sets at a second seed (ExDD, quality)",
     ["proof_cpu-final-exdd-seed1.json", "proof_cpu-final-draem-seed1.json"], "current", None,
     "qualifies proof-final: the seed-0 lead of flips-only copy-paste does not hold", _proof_seed1),
    ("proof-ablation", "proof", "magnetic-tile: transplant and copy-paste settings, generation quality only",
     ["proof_cpu-ablation-*.json"], "ablation", None, "choices judged on the test defects (selection bias)",
     _ablation),
    ("realism-controls", "realism_controls", "magnetic-tile: the realism metric on real labeled defects, a no-op set",
     ["realism_controls_cpu.json"], "current", None, "", _realism),
    ("proof-keep-core-sweep", "proof", "magnetic-tile: first keep-core sweep (full-augmentation paste), quality only",
     ["proof_cpu-transplant-core0.5-s0.2.json", "proof_cpu-transplant-ddpmsampler-s0.2.json",
      "proof_cpu-transplant-seamless-s0.2.json"], "superseded", "proof-ablation",
     "its copypaste-seamless row is the ablation table's Poisson-blending row", _keepcore),
    ("proof-transplant-strength", "proof", "magnetic-tile: transplant strength sweep 0.1-0.7, quality only",
     ["proof_cpu-transplant-s*.json"], "superseded", "proof-ablation",
     "the transplant now pastes with flips only and keeps the core", _strength),
    ("proof-transplant-detect", "proof", "magnetic-tile: detectors with transplant-ddpm at 0.2",
     ["proof_cpu-transplant-ddpm-s0.2-detect.json"], "superseded", "proof-final", "older transplant",
     _transplant_detect),
    ("proof-all-generators", "proof", "magnetic-tile: every generator under ExDD, AST and seg, square 128 px inputs",
     ["proof_cpu-all-real-masks-q999.json"], "superseded", "proof-final",
     "still the only run with ddpm and ldm under all three detectors", _proof_all),
    ("proof-seg", "proof", "magnetic-tile: seg with real, copypaste, draem and cddpm, square inputs",
     ["proof_cpu-seg-real-masks-q999.json"], "superseded", "proof-all-generators",
     "its rows came out identical in proof-all-generators", _proof_seg),
    ("proof-first", "proof", "magnetic-tile: the first proof and the masks x positive-bank-filter ablation (ExDD, AST)",
     ["proof_cpu.json", "proof_cpu-real-masks.json", "proof_cpu-perlin-q999.json", "proof_cpu-real-masks-q999.json"],
     "superseded", "proof-all-generators, then proof-final", "realism from the metric before its surface filter",
     _proof_first),
    ("proof-neu-detection", "proof_neu", "NEU-DET: seg mAP with generated sets at 20/40/100% of the labels",
     ["proof_neu_cpu-diffusion-*.json"], "current", None,
     "seg boxes; det (det-neu) is the stronger NEU-DET detector", _neu_detect),
    ("proof-neu-semi", "proof_neu", "NEU-DET: semi-supervised seg with pseudo-labels at 20% and 40%",
     ["proof_neu_cpu-semi.json"], "current", None, "", _neu_semi),
    ("proof-neu-seg-baselines", "proof_neu", "NEU-DET: seg with draem and copypaste at 20/40/100% of the labels",
     ["proof_neu_cpu-seg.json"], "superseded", "proof-neu-detection", "square-input code", _neu_seg),
    ("proof-neu-quality", "proof_neu", "NEU-DET: per-class KID and class fidelity of cddpm, ldm, draem",
     ["proof_neu_cpu.json", "proof_neu_cpu-ddim.json"], "current", None,
     "the -ddim file is the sampler ablation", _neu_quality),
    ("diffusion-features", "diffusion_features", "DDPM vs MobileNetV2 features vs both (magnetic-tile, NEU-DET)",
     ["diffusion_features_*.json"], "current", None, "magnetic-tile run stopped after 5 of 9 runs",
     _diffusion_features),
    ("magnetic-tile-aspect", "magnetic_tile", "ExDD and AST on magnetic-tile at 128 px: own aspect vs square",
     ["magnetic_tile_cpu_res128*.json"], "current", None, "", _mt_aspect),
    ("magnetic-tile-256", "magnetic_tile", "ExDD and AST on magnetic-tile at 256 x 256, none and draem",
     ["magnetic_tile_cpu.json", "magnetic_tile_reports/*/report.json"], "superseded", "magnetic-tile-aspect",
     "pixel metrics on squashed masks; no positive-bank filter", _mt_256),
    ("cached-heads", "cached_heads", "seg and det step time with and without cached backbone maps",
     ["cached_heads_*.json"], "current", None, "", _cached),
    ("coreset-speed", "coreset_speed", "ExDD's greedy coreset: one pick per pass vs sweeps vs sampled rows",
     ["coreset_speed_*.json"], "current", None, "", _coreset),
    ("large-images", "large_images", "ExDD on 2000x800 images: tiles vs whole images, memory and time",
     ["large_images_*.json"], "current", None, "", _large),
    ("ddpm-throughput-conditional", "ddpm_throughput", "the proof's conditional DDPM training step on CPU: before and "
     "after fused AdamW, foreach EMA and cheaper Perlin masks; channels_last and bf16 against the diffusers loop",
     ["ddpm_throughput_cpu_conditional_*.json"], "current", None, "before: the library at c813c59, same script",
     _ddpm_conditional),
    ("ddpm-throughput", "ddpm_throughput", "DDPM training and sampling speed on CPU, tiny preset",
     ["ddpm_throughput_*.json"], "current", None, "measured on the earlier 2-level tiny UNet", _ddpm),
]


def _companions(rel: str) -> list[str]:
    """Files beside a JSON that share its stem (.md, .log, .png, _samples.png); a report.json takes its folder."""
    path = RESULTS / rel
    if path.name == "report.json":
        return sorted(str(p.relative_to(RESULTS)) for p in path.parent.rglob("*") if p.is_file() and p != path)
    stem = path.name[: -len(".json")]
    return sorted(str(p.relative_to(RESULTS)) for p in path.parent.iterdir()
                  if p != path and p.suffix != ".json" and (p.stem == stem or p.stem == f"{stem}_samples"))


def _provenance(docs: dict[str, dict], key: str) -> str | None:
    values = sorted({str(d[key])[:12] if key == "commit" else str(d[key]) for d in docs.values() if d.get(key)})
    return ", ".join(values) or None


def _hardware(docs: dict[str, dict]) -> str | None:
    seen = []
    for d in docs.values():
        h = d.get("hardware") or {}
        text = f"{h.get('cpu', '?')}, {h.get('cpu_cores', h.get('cpu_count', '?'))} cores, torch {h.get('torch', '?')}"
        if h and text not in seen:
            seen.append(text)
    return "; ".join(seen) or None


def build() -> list[dict[str, Any]]:
    files = sorted(str(p.relative_to(RESULTS)) for p in RESULTS.rglob("*.json") if p.name != "index.json")
    named = {f: f.removeprefix(f"{HISTORY}/") for f in files}  # a family's patterns match in history/ too
    taken: set[str] = set()
    records = []
    for fid, bench, what, patterns, status, by, note, headline in FAMILIES:
        members = [f for f in files if f not in taken and any(fnmatch.fnmatch(named[f], p) for p in patterns)]
        if not members:
            continue
        taken.update(members)
        docs = {named[f]: json.loads((RESULTS / f).read_text(encoding="utf-8")) for f in members}
        try:
            head = headline(docs)
        except (KeyError, TypeError, ValueError) as e:  # a result file changed shape: say so, keep the rest
            head = f"(headline not computed: {type(e).__name__} {e})"
        records.append({"family": fid, "benchmark": bench, "measures": what,
                        "files": members + [c for m in members for c in _companions(m)],
                        "commit": _provenance(docs, "commit"), "date": _provenance(docs, "date"),
                        "hardware": _hardware(docs), "status": status, "superseded_by": by, "note": note or None,
                        "headline": head})
    for f in files:
        if f not in taken:
            records.append({"family": Path(f).stem, "benchmark": None, "measures": None, "files": [f],
                            "commit": None, "date": None, "hardware": None, "status": "unindexed",
                            "superseded_by": None, "note": "add it to FAMILIES in benchmarks/index_results.py",
                            "headline": None})
    return records


def markdown(records: list[dict[str, Any]]) -> str:
    lines = [
        "# Results index",
        "",
        "One row per result family; written by `python benchmarks/index_results.py` (with `index.json`): do not",
        "edit by hand. Status and \"superseded by\" come from the script's FAMILIES table; headlines are computed",
        "from the JSONs.",
        "The current headline per dataset and detector: [RESULTS.md](RESULTS.md); tables and commentary:",
        "[../README.md](../README.md) and [../../docs/](../../docs/). All figures are CPU figures on 2 shared cores",
        "(AMD EPYC until 2026-12-01, Intel Xeon since). Older JSONs got their commit afterwards: the commit that",
        "first stored them (their `commit_note` says so).",
        "",
        "| family | what it measures | files | date / commit | status | headline |",
        "|---|---|---|---|---|---|",
    ]
    for r in records:
        status = r["status"] + (f" by {r['superseded_by']}" if r["superseded_by"] else "")
        if r["note"]:
            status += f" ({r['note']})"
        files = ", ".join(f"[{f}]({f})" for f in r["files"] if f.endswith(".json"))
        others = len(r["files"]) - files.count("](")
        if others:
            files += f" (+{others} .md/.png/.log)"
        when = " / ".join(x for x in (r["date"], r["commit"]) if x) or "not recorded"
        lines.append(f"| {r['family']} | {r['measures'] or ''} | {files} | {when} | {status} | {r['headline'] or ''} |")
    return "\n".join(lines) + "\n"


# (dataset, detector, family holding its current figure, the JSON its headline comes from): the rows of RESULTS.md
HEADLINES = [
    ("NEU-DET", "det (FCOS, boxes)", "proof-neu-det", "proof_neu_cpu-det-3seeds.json"),
    ("NEU-DET", "seg (boxes cut from maps)", "learning-curve-neu-det-seg", "learning_curve_neu-det_seg_cpu-128.json"),
    ("magnetic-tile", "seg", "learning-curve-magnetic-tile", "learning_curve_magnetic-tile_seg_cpu.json"),
    ("magnetic-tile", "seg (generated sets, 3 seeds)", "proof-mt-seg-3seeds", "proof_cpu-seg-3seeds.json"),
    ("magnetic-tile", "ExDD (generated sets, 3 seeds)", "proof-mt-exdd-3seeds", "proof_cpu-exdd-3seeds.json"),
    ("magnetic-tile, NEU-DET", "ExDD, seg, det: the cDDPM's value against its training steps", "compute-curve",
     "compute_curve_magnetic-tile.json"),
    ("magnetic-tile", "seg, ExDD (more sets, seed 0)", "proof-final", "proof_cpu-final-exdd-seg.json"),
    ("magnetic-tile", "ExDD, second seed", "proof-seed1", "proof_cpu-final-exdd-seed1.json"),
]


def _run_record(file: str) -> dict[str, str]:
    """Command, date and commit a result JSON records (the date of its commit where it records none)."""
    import subprocess

    d = json.loads((RESULTS / file).read_text(encoding="utf-8"))
    commit = str(d.get("commit") or "?")
    date = d.get("date") or subprocess.run(["git", "show", "-s", "--format=%cs", commit.split("+")[0]],
                                           cwd=RESULTS, capture_output=True, text=True).stdout.strip()
    return {"command": d.get("command") or "not recorded", "date": date or "not recorded", "commit": commit[:12]}


def results_markdown(records: list[dict[str, Any]]) -> str:
    by_family = {r["family"]: r for r in records}
    lines = [
        "# Current results",
        "",
        "The current headline figure per dataset and detector, each with the command, date and commit that produced",
        "it; written by `python benchmarks/index_results.py` from the JSONs (do not edit by hand). Every result",
        "family, older runs included, is in [INDEX.md](INDEX.md); superseded runs are under [history/](history/).",
        "CPU figures on 2 shared cores; ± is the standard deviation over seeds.",
        "",
        "| dataset | detector | figure | command | date | commit | file |",
        "|---|---|---|---|---|---|---|",
    ]
    for dataset, detector, family, file in HEADLINES:
        r = by_family.get(family)
        if r is None or file not in r["files"]:
            lines.append(f"| {dataset} | {detector} | (no {file} in results/) | | | | |")
            continue
        run = _run_record(file)
        lines.append(f"| {dataset} | {detector} | {r['headline']} | `{run['command']}` | {run['date']} | "
                     f"{run['commit']} | [{file}]({file}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    records = build()
    (RESULTS / "index.json").write_text(json.dumps(records, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (RESULTS / "INDEX.md").write_text(markdown(records), encoding="utf-8")
    (RESULTS / "RESULTS.md").write_text(results_markdown(records), encoding="utf-8")
    count = sum(len(r["files"]) for r in records)
    print(f"{len(records)} families, {count} files -> {RESULTS / 'index.json'}, INDEX.md")


if __name__ == "__main__":
    main()
