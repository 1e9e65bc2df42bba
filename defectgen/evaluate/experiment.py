"""`defectgen validate`: train a detector with a synthetic set and with each baseline in one run, score all on
the real test set, and write report.json, report.md, roc.png and anomaly-map overlays (`defectgen.evaluate.report`
writes the files; this module runs the experiment).

Runs: `synthetic` (the normals plus the given synthetic set) and the baselines of `defectgen.evaluate.baselines`
(none, draem, copypaste, and for supervised detectors real and real+synthetic). Where the test set has boxes or
masks of several classes and the detector outputs boxes, COCO box mAP is measured too.

With `semi` (a folder of unlabeled images; seg), every run also gets a `RUN+pseudo` twin: the run's mean teacher
labels the unlabeled images, the labels that pass `defectgen.detect.semi`'s checks join the run's training set,
and a fresh student trains on both.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import KW_ONLY, asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from defectgen.detect.backbone import SEPARATOR, TINY_WARNING, is_pretrained, load_backbone, resolve_backbone
from defectgen.detect.base import DetectorOptions, detector_names, get_detector
from defectgen.detect.semi import DefectReference, PseudoLabelRule, pseudo_label
from defectgen.detect.tiling import check_tile
from defectgen.errors import DefectgenError, warn
from defectgen.evaluate.baselines import DEFAULT_BASELINES, NEEDS_LABELED, baseline_names, get_baseline, training_sets
from defectgen.evaluate.compare import (
    KeptMaps,
    RunSeeds,
    curve_run,
    headline_metrics,
    record,
    summary_lines,
    verdicts,
    worth,
)
from defectgen.evaluate.data import Inputs, TestSet, TrainingSet, load_inputs
from defectgen.evaluate.report import overlay_picks, write_overlays, write_roc, write_validation_report
from defectgen.evaluate.runs import RunResult, train_and_score
from defectgen.io.output import OutputFolder
from defectgen.io.resolution import Resolution, parse_resolution
from defectgen.progress import above_bars
from defectgen.runtime import JobEstimate, hardware, pick_device


@dataclass
class ValidationConfig:
    """What `run_validation` runs: the detector, the normals, the test set and the report folder, then keywords.

    detector: a registered detector (ast, exdd, seg, det). train: the normal images; None for a supervised
    detector on a dataset without normals (NEU-DET), which then learns from defect images alone. test: the real
    test set. out: the report folder. synthetic: one set, or several pooled (one folder per class, say).
    baselines: names from `defectgen.evaluate.baselines`.

    resolution: the model input, `HxW` or the short side with the aspect kept (`parse_resolution`); one input
    size serves the whole run, the one the test set's most common image size gives, and every set is resized
    to it. Anomaly maps are resized back to each test image's own size and pixel metrics use the original
    masks; report.json records the input used as [H, W]. tile: instead, images stay at native scale and the
    detector works on overlapping `tile` x `tile` windows (`Tiled`); `resolution` is then not used.

    real_labeled: real labeled defects (any layout `open_dataset` reads; an MVTec root gives its labeled/
    split), needed by the copypaste, real and real+synthetic baselines. n_draem: how many defects the draem and
    copypaste baselines make (default: as many as the synthetic set has, else 100). backbone: see
    `resolve_backbone` (None: the pretrained default); a DDPM run folder gives diffusion features, noised to
    `feature_timesteps` and PCA-projected to `feature_dim` channels a level (`DiffusionBackbone`).

    semi: a folder of unlabeled images (any layout; its labels, if any, are not read): each run gets a
    `RUN+pseudo` twin trained with the pseudo-labels its teacher gives them under `semi_rule`
    (`defectgen.detect.semi`; seg only). box_head: det's torchvision model (`detect.det.BOX_HEADS`).

    seeds: every run is made `seeds` times, with seeds `seed`, `seed` + 1, ... (the detector's initialisation and
    training order, and the draem and copypaste defects, drawn anew): each metric is reported as mean +- std and
    every run holding the synthetic set gets a paired verdict against every baseline (`evaluate.compare`); one
    seed gets a bootstrap interval over test images instead. curve: shares of the labeled defects (0 < share <= 1)
    the `real` run is also trained on, the same seeds, as `real@N%`: the real-only learning curve, on which every
    run with real defects is placed as a worth in real labeled defects."""

    detector: str
    train: str | Path | None
    test: str | Path
    out: str | Path
    _: KW_ONLY
    # the sets
    synthetic: str | Path | Sequence[str | Path] | None = None
    baselines: Sequence[str] = DEFAULT_BASELINES
    real_labeled: str | Path | None = None
    n_draem: int | None = None
    max_train: int | None = None
    max_test: int | None = None
    semi: str | Path | None = None
    semi_rule: PseudoLabelRule | None = None
    # the model input and features
    backbone: str | None = None
    resolution: int | str | Resolution = 256
    tile: int | None = None
    feature_timesteps: Sequence[int] | None = None
    feature_dim: int | None = None
    # the detectors' training (`DetectorOptions`)
    seed: int = 0
    steps: int = 1000
    epochs: int = 50
    patience: int = 5
    student_width: int | None = None
    batch_size: int = 8
    lr: float = 1e-3
    coreset_ratio: float = 0.1
    positive_quantile: float | None = None
    box_head: str = "fcos"
    # repeats: seeds, and the real-only learning curve
    seeds: int = 1
    curve: Sequence[float] | None = None
    # the run and its output
    device: str | None = None
    n_overlays: int = 8
    save_models: bool = False
    overwrite: bool = False
    progress: bool = True


def run_validation(config: ValidationConfig) -> dict[str, Any]:
    """Train `config.detector` once per run (synthetic set, then each baseline), score each on the real test set,
    write the report to `config.out`, and return the results dict (also written as report.json). Every input is
    read and every baseline made before the output folder is touched: a bad input leaves nothing behind."""
    start = time.perf_counter()
    config, det_cls, skipped = _checked(config)
    torch.manual_seed(config.seed)
    dev = pick_device(config.device)
    # loaded before anything is read or written: offline, the error comes first
    config = replace(config, backbone=resolve_backbone(config.backbone))
    bb = load_backbone(config.backbone, dev, config.feature_timesteps, config.feature_dim)
    inputs = _read_inputs(config)
    boxes_too = _boxes_too(config, det_cls, inputs.test_set)
    seeds = [config.seed + k for k in range(config.seeds)]
    runs, n_syn = _seed_sets(config, inputs, seeds[0])  # made before the folder: a bad input leaves nothing
    for name, note in skipped.items():
        print(f"note: {note}; the {name} baseline is skipped", file=sys.stderr, flush=True)
    folder = OutputFolder(config.out, overwrite=config.overwrite, resumable=False, verb="validate",
                          protect=[config.train, config.test, *(config.synthetic or []),
                                   *config.backbone.split(SEPARATOR), config.real_labeled, config.semi])
    if not is_pretrained(config.backbone):  # said once the inputs are known good, so a bad input stays one line
        warn(TINY_WARNING)
    out = folder.prepare()
    try:
        size = inputs.test_set.size or (config.tile, config.tile)
        per_seed, pictures = _run_seeds(out, config, det_cls, bb, size, inputs, runs, seeds, boxes_too)
        results = _compared(config, det_cls, per_seed, pictures, inputs.test_set, seeds, boxes_too)
        results["files"] = pictures.write(out, inputs.test_set)
        results["config"] = _run_config(config, det_cls, n_syn, dev, size, bb)
        if skipped:
            results["skipped"] = skipped
        results.update(_data_summary(inputs, boxes_too))
        results["hardware"] = hardware(dev)
        results["wall_time_s"] = time.perf_counter() - start
        write_validation_report(out, results)
        return results
    except BaseException:
        folder.abandon()  # a report is written whole or not at all: no half report folder stays behind
        raise


def _seed_sets(config: ValidationConfig, inputs: Inputs, seed: int) -> tuple[dict[str, TrainingSet], int]:
    """One seed's training sets by run name: the synthetic set, the baselines (draem and copypaste drawn with
    `seed`), and the lower points of the learning curve (`real@N%`, the share drawn with `seed`)."""
    runs, n_syn = training_sets(config.baselines, inputs, config.n_draem, seed)
    for share in config.curve or ():
        if share < 1.0:
            runs[curve_run(share)] = inputs.labeled.share(share, seed).training_set()
    return runs, n_syn


def _run_seeds(out: Path, config: ValidationConfig, det_cls, bb, size: tuple[int, int], inputs: Inputs,
               first: dict[str, TrainingSet], seeds: list[int], boxes_too: bool
               ) -> tuple[dict[str, list[RunResult]], _Pictures]:
    """Every run at every seed: the results by run name, seed by seed, and the first seed's pictures."""
    pictures = _Pictures(overlay_picks(inputs.test_set, config.n_overlays, np.random.default_rng(config.seed)))
    per_seed: dict[str, list[RunResult]] = {}
    for k, seed in enumerate(seeds):
        if len(seeds) > 1:
            _say(f"validate: seed {seed} ({k + 1} of {len(seeds)})")
        runs = first if k == 0 else _seed_sets(config, inputs, seed)[0]
        seeded = replace(config, seed=seed)
        results = _run_all(out, seeded, det_cls, bb, _options(seeded, size), inputs, runs, boxes_too,
                           pictures if k == 0 else None, suffix=f"_seed{seed}" if len(seeds) > 1 else "")
        for name, result in results.items():
            per_seed.setdefault(name, []).append(result)
    return per_seed, pictures


def _compared(config: ValidationConfig, det_cls, per_seed: dict[str, list[RunResult]], pictures: _Pictures,
              test_set: TestSet, seeds: list[int], boxes_too: bool) -> dict[str, Any]:
    """report.json's comparison: each run over its seeds, the verdicts, the worth in real defects, the lines that
    open report.md."""
    metrics = headline_metrics(boxes_too, det_cls.box_detector)
    kept = {n: KeptMaps(c["maps"], c["scores"]) for n, c in pictures.curves.items()} if len(seeds) == 1 else None
    seeded = {name: RunSeeds.of(rs, metrics) for name, rs in per_seed.items()}
    judged = verdicts(seeded, metrics, test_set, kept, config.seed)
    curve = {"shares": sorted(config.curve), "metric": metrics[0]} if config.curve else None
    worths = worth(seeded, metrics[0]) if curve else []
    return {"summary": summary_lines(judged, worths, curve), "verdicts": [p.to_json() for p in judged],
            "worth": [w.to_json() for w in worths], "curve": curve, "seeds": seeds,
            "runs": {name: record(rs, seeds, metrics) for name, rs in per_seed.items()}}


# ---- checks before anything is read -----------------------------------------------------------------------------

def _checked(config: ValidationConfig) -> tuple[ValidationConfig, type, dict[str, str]]:
    """The config checked and normalised (paths as Paths, synthetic as a list, resolution parsed, the baselines
    to run, semi's rule), the detector class, and the baselines skipped with why; before any input is read."""
    from defectgen.detect.det import BOX_HEADS  # torchvision's detection models: imported when validate runs

    det_cls = get_detector(config.detector)
    if config.box_head not in BOX_HEADS:
        raise DefectgenError(None, f"unknown box head {config.box_head!r}: choose one of {', '.join(BOX_HEADS)}")
    resolution, tile = parse_resolution(config.resolution), check_tile(config.tile)
    curve = _checked_repeats(config)
    wanted = list(config.baselines) + (["real"] if curve and "real" not in config.baselines else [])
    baselines, skipped = _check_choices(config.detector, det_cls, config.train, config.synthetic, wanted,
                                        config.real_labeled)
    semi, semi_rule = config.semi, config.semi_rule
    if semi is not None:
        _check_semi(config.detector, det_cls, tile)
        semi, semi_rule = Path(semi), semi_rule or PseudoLabelRule()
    synthetic = config.synthetic
    if synthetic is not None:
        synthetic = [Path(synthetic)] if isinstance(synthetic, (str, Path)) else [Path(p) for p in synthetic]
    return replace(config, train=Path(config.train) if config.train is not None else None, test=Path(config.test),
                   out=Path(config.out), synthetic=synthetic, baselines=baselines, resolution=resolution, tile=tile,
                   real_labeled=Path(config.real_labeled) if config.real_labeled is not None else None,
                   semi=semi, semi_rule=semi_rule, curve=curve), det_cls, skipped


def _checked_repeats(config: ValidationConfig) -> list[float] | None:
    """`seeds` checked, and `curve` as sorted shares (the `real` run joins the baselines where a curve is asked)."""
    if int(config.seeds) < 1:
        raise DefectgenError(None, f"seeds must be 1 or more (got {config.seeds})")
    if config.curve is None:
        return None
    curve = sorted({float(v) for v in config.curve})
    if not curve or any(not 0.0 < v <= 1.0 for v in curve):
        raise DefectgenError(None, "curve: shares of the labeled defects must lie in (0, 1], as in 0.25,0.5,1.0 "
                             f"(got {','.join(f'{v:g}' for v in config.curve) or 'none'})")
    if config.real_labeled is None:
        raise DefectgenError(None, "curve trains the real run on shares of the labeled defects: give "
                             "`real_labeled`")
    return curve


def _check_choices(detector: str, det_cls, train, synthetic, baselines: Sequence[str], real_labeled
                   ) -> tuple[list[str], dict[str, str]]:
    """The runs to make (baselines without repeats or runs the detector cannot learn from) and the skipped
    ones with why; a choice that cannot work is refused here, before any input is read."""
    known = baseline_names()
    unknown = [b for b in baselines if b not in known]
    if unknown:
        raise DefectgenError(None, f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    chosen = [get_baseline(b) for b in dict.fromkeys(baselines)]
    skipped = {b.name: f"{detector} is supervised: without defects it has nothing to learn from"
               for b in chosen if det_cls.supervised and not b.has_defects}
    chosen = [b for b in chosen if b.name not in skipped]
    wrong = [b.name for b in chosen if b.supervised_only and not det_cls.supervised]
    if wrong:
        supervised = ", ".join(n for n in detector_names() if get_detector(n).supervised)
        raise DefectgenError(None, f"baseline(s) {', '.join(wrong)} train on labeled defects alone, which only a "
                             f"supervised detector can use ({supervised}); {detector} cannot")
    if synthetic is None and not chosen:
        raise DefectgenError(None, "nothing to run: give `synthetic` or at least one baseline"
                             + (f" ({next(iter(skipped.values()))})" if skipped else ""))
    need = [b.name for b in chosen if b.needs_labeled]
    if need and real_labeled is None:
        raise DefectgenError(None, f"baseline(s) {', '.join(need)} need `real_labeled`: a folder of real labeled "
                             "defects with masks or boxes")
    for b in chosen:
        if b.needs_synthetic and synthetic is None:
            raise DefectgenError(None, f"baseline {b.name} needs `synthetic`")
    if train is None:
        if not det_cls.supervised:
            raise DefectgenError(None, f"{detector} learns what normal looks like: it needs normal training "
                                 "images (`train`)")
        no_normals = [b.name for b in chosen if b.paints_on_normals]
        if no_normals:
            raise DefectgenError(None, f"baseline(s) {', '.join(no_normals)} paint defects on normal images: "
                                 "give `train` normals, or leave them out")
    return [b.name for b in chosen], skipped


def _check_semi(detector: str, det_cls, tile: int | None) -> None:
    if not hasattr(det_cls, "teacher"):
        raise DefectgenError(None, f"`semi` pseudo-labels with a supervised detector's mean teacher (seg); "
                             f"{detector} has none")
    if tile:
        raise DefectgenError(None, "`semi` does not work on tiles yet: leave out `tile`")


# ---- inputs -----------------------------------------------------------------------------------------------------

def _read_inputs(config: ValidationConfig) -> Inputs:
    """Every input of a checked config, at the model input the test set gives (native size with `tile`)."""
    uses_labeled = any(get_baseline(b).needs_labeled for b in config.baselines)
    return load_inputs(config.train, config.test, config.synthetic, config.real_labeled,
                       None if config.tile else config.resolution, config.max_train, config.max_test, config.seed,
                       config.progress, semi=config.semi,
                       unused_labeled=None if uses_labeled
                       else f"no run uses `real_labeled` (baselines {', '.join(NEEDS_LABELED)} do)")


def _boxes_too(config: ValidationConfig, det_cls, test_set: TestSet) -> bool:
    """Whether the runs are scored by COCO box mAP too; refused where that cannot work."""
    boxes_too = det_cls.produces_boxes and (len(test_set.box_classes) >= 2 or det_cls.box_detector)
    if det_cls.box_detector and not any(test_set.boxes):
        raise DefectgenError(config.test, f"{config.detector} is scored by box mAP and the test set has no defect "
                             "boxes (VOC or COCO boxes, or masks whose regions give them)")
    if config.tile and boxes_too:
        raise DefectgenError(None, "`tile` does not produce boxes yet, and this multi-class test set is scored "
                             "by box mAP: leave out `tile`")
    return boxes_too


def _options(config: ValidationConfig, size: tuple[int, int]) -> DetectorOptions:
    return DetectorOptions(seed=config.seed, sigma=4.0 * min(size) / 256, steps=config.steps,
                           batch_size=config.batch_size, lr=config.lr, coreset_ratio=config.coreset_ratio,
                           positive_quantile=config.positive_quantile, width=config.student_width,
                           epochs=config.epochs, patience=config.patience, box_head=config.box_head)


# ---- the runs ---------------------------------------------------------------------------------------------------

@dataclass
class _Pictures:
    """What roc.png and the overlays keep of each finished run: its curve, its overlays' maps and colour scale."""

    show: np.ndarray  # the test images that get an overlay
    curves: dict[str, dict[str, Any]] = field(default_factory=dict)
    overlay_maps: dict[str, tuple[list[np.ndarray], float, float]] = field(default_factory=dict)

    def keep(self, name: str, result: RunResult, maps: list[np.ndarray], scores: np.ndarray) -> None:
        self.curves[name] = {"scores": scores, "maps": maps, "metrics": result.metrics}
        every = np.concatenate([m.ravel() for m in maps])  # the colour scale spans all test images
        self.overlay_maps[name] = ([maps[i] for i in self.show], float(np.percentile(every, 1)),
                                   float(np.percentile(every, 99.9)))

    def write(self, out: Path, test_set: TestSet) -> dict[str, Any]:
        """roc.png and overlays/; the report's files by kind."""
        write_roc(out / "roc.png", test_set, self.curves)
        self.curves.clear()
        overlays = write_overlays(out / "overlays", test_set, self.show, self.overlay_maps)
        return {"json": "report.json", "markdown": "report.md", "roc": "roc.png", "overlays": overlays}


def _run_all(out: Path, config: ValidationConfig, det_cls, bb, options: DetectorOptions, inputs: Inputs,
             runs: dict[str, TrainingSet], boxes_too: bool, pictures: _Pictures | None, suffix: str = ""
             ) -> dict[str, RunResult]:
    """Train and score every run of one seed (and its `+pseudo` twin when there are unlabeled images), keeping
    each run's maps in `pictures` where given (and saving the models with `save_models`): the results by run
    name."""
    results: dict[str, RunResult] = {}
    queue: list[tuple[str, TrainingSet, dict[str, int] | None]] = [(name, data, None) for name, data in runs.items()]
    # the whole job's time: said after the first steps of the first run, and again as each run starts
    job = JobEstimate(plan_runs(list(runs), det_cls, options.steps, inputs.unlabeled is not None),
                      getattr(getattr(bb, "mean", None), "device", None),
                      above_bars(_say) if config.progress else None, what="validate")
    with job.current_job():
        while queue:
            name, data, pseudo = queue.pop(0)
            job.start(name)
            model, result, maps, scores = train_and_score(name, data, config.detector, bb, options, inputs.normals,
                                                          inputs.test_set, boxes_too=boxes_too,
                                                          progress=config.progress, tile=config.tile)
            result.pseudo = pseudo
            if pseudo is None and inputs.unlabeled is not None:
                twin = _with_pseudo_labels(name, model, data, inputs, bb, config.semi_rule, options.seed,
                                           config.progress)
                if twin is not None:
                    queue.insert(0, (f"{name}+pseudo", *twin))
                else:
                    job.drop(f"{name}+pseudo")
            job.finish()
            results[name] = result
            if pictures is not None:
                pictures.keep(name, result, maps, scores)
            if config.save_models:
                model.save(out / f"{config.detector}_{name}{suffix}.safetensors")
            del maps, model
    return results


def _with_pseudo_labels(name: str, model, data: TrainingSet, inputs: Inputs, bb, rule: PseudoLabelRule, seed: int,
                        progress: bool) -> tuple[TrainingSet, dict[str, int]] | None:
    """Run `name`'s training set plus the pseudo-labels its trained model's teacher gives the unlabeled images,
    with the counts (None, with a warning, when no label passes)."""
    reference = DefectReference(bb, data.images, data.masks, inputs.normals, seed=seed) \
        if rule.feature_share > 0 else None
    pseudo, counts = pseudo_label(model.teacher(), inputs.unlabeled, rule, reference, progress=progress)
    if progress:
        print(f"[{name}] pseudo-labels: kept {counts['kept']} of {counts['regions']} regions on "
              f"{counts['images_used']} of {counts['unlabeled_images']} images", flush=True)
    if pseudo["images"] is None:
        warn(f"run {name}: no pseudo-label passed the checks (`semi_threshold`, `semi_feature_share`); "
             f"{name}+pseudo is not run")
        return None
    labels = TrainingSet(pseudo["images"], pseudo["masks"], None, pseudo["labels"], pseudo["class_names"])
    return data.merge(labels), counts


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def plan_runs(run_names: Sequence[str], det_cls, steps: int, pseudo_twins: bool) -> list[tuple[str, int | None]]:
    """The runs validate will make, in order, with the steps each trains for (None: no steps, ExDD): what
    `JobEstimate` estimates. With unlabeled images every run has a `+pseudo` twin right after it."""
    per_run = int(steps) if "steps" in det_cls.options else None
    out = []
    for name in run_names:
        out.append((name, per_run))
        if pseudo_twins:
            out.append((f"{name}+pseudo", per_run))
    return out


# ---- report.json's config and data sections ---------------------------------------------------------------------

def _run_config(config: ValidationConfig, det_cls, n_syn: int, dev, size: tuple[int, int], bb) -> dict[str, Any]:
    """report.json's config: what was run, with the checked config's values, except the options the detector
    does not use (steps, epochs, patience, coreset_ratio, positive_quantile), recorded as None, and the feature
    options the backbone reports using."""
    c, uses = config, set(det_cls.options)
    used = {k: getattr(c, k) if k in uses else None
            for k in ("steps", "epochs", "patience", "coreset_ratio", "positive_quantile")}
    features = bb.options() if hasattr(bb, "options") else {}
    return {
        "detector": c.detector, "train": str(c.train) if c.train else None,
        "synthetic": (str(c.synthetic[0]) if len(c.synthetic) == 1 else [str(p) for p in c.synthetic])
        if c.synthetic else None,
        "real_labeled": str(c.real_labeled) if c.real_labeled else None,
        "test": str(c.test), "baselines": list(c.baselines), "backbone": c.backbone,
        "backbone_pretrained": is_pretrained(c.backbone), "feature_timesteps": features.get("feature_timesteps"),
        "feature_dim": features.get("feature_dim"), "resolution": list(size), "tile": c.tile,
        "seed": c.seed, "steps": used["steps"], "epochs": used["epochs"], "patience": used["patience"],
        "student_width": c.student_width, "batch_size": c.batch_size, "lr": c.lr,
        "coreset_ratio": used["coreset_ratio"], "positive_quantile": used["positive_quantile"],
        "n_draem": n_syn if "draem" in c.baselines else None,
        "n_copypaste": n_syn if "copypaste" in c.baselines else None, "max_train": c.max_train,
        "max_test": c.max_test, "semi": str(c.semi) if c.semi is not None else None,
        "semi_rule": asdict(c.semi_rule) if c.semi is not None else None, "device": str(dev),
        "seeds": int(c.seeds), "curve": list(c.curve) if c.curve else None,
        "box_head": c.box_head if c.detector == "det" else None,
    }


def _data_summary(inputs: Inputs, boxes_too: bool) -> dict[str, Any]:
    """report.json's train and test sections (and synthetic_clean_sources where there is a synthetic set)."""
    test_set, labeled = inputs.test_set, inputs.labeled
    out: dict[str, Any] = {"train": {"normals": int(len(inputs.normals)), "channels": inputs.channels}}
    if labeled is not None:
        out["train"]["labeled_defects"] = int(len(labeled.images))
        out["train"]["labeled_classes"] = labeled.class_names
    out["test"] = {"images": int(len(test_set.labels)), "normal": int((~test_set.labels).sum()),
                   "defect": int(test_set.labels.sum()),
                   "classes": {c: test_set.classes.count(c) for c in sorted(set(test_set.classes))}}
    if boxes_too:
        out["test"]["boxes"] = {c: sum(b["class"] == c for bs in test_set.boxes for b in bs)
                                for c in test_set.box_classes}
    if inputs.clean_sources is not None:
        out["synthetic_clean_sources"] = inputs.clean_sources
    return out
