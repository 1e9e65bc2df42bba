"""Summaries people look at: dataset statistics with a contact sheet (`inspect`), and every file of a `defectgen
validate` report (report.md, report.json, roc.png, overlays/). Contact sheets themselves: `defectgen.io.pictures`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from defectgen.errors import DefectgenError
from defectgen.io.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from defectgen.io.images import fit_mask, write_image
from defectgen.io.pictures import contact_sheet
from defectgen.io.sample import Sample
from defectgen.metrics import METRICS, roc_curve

if TYPE_CHECKING:
    from defectgen.evaluate.data import TestSet

DISPLAY_SIDE = 1600  # overlays of larger images are shrunk to this longer side: a picture, not a measurement


def _quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    q = np.quantile(np.asarray(values, float), [0.0, 0.25, 0.5, 0.75, 1.0])
    return {k: round(float(v), 6) for k, v in zip(("min", "p25", "median", "p75", "max"), q, strict=True)}


_BITS = {"uint8": 8, "uint16": 16, "float32": 32}


def dataset_summary(dataset, samples: list[Sample]) -> dict[str, Any]:
    """Counts and distributions over the samples that were read (see `defectgen inspect`)."""
    sizes = Counter(f"{s.height}x{s.width}" for s in samples)  # HxW, as --size takes it
    channels = Counter(s.channels for s in samples)
    dtypes = Counter(str(s.image.dtype) for s in samples)
    classes = Counter(s.class_name or "good" for s in samples)
    with_mask = [s for s in samples if s.mask is not None]
    area = [float(s.mask.mean()) for s in with_mask if s.mask.any()]
    empty = sum(1 for s in with_mask if not s.mask.any())
    boxes = sum(len(s.boxes) for s in samples)
    return {
        "path": str(dataset.root),
        "format": dataset.format,
        "images": len(samples),
        "splits": dict(Counter(s.split or "-" for s in samples)),
        "classes": dict(sorted(classes.items())),
        "sizes": dict(sizes.most_common()),
        "channels": {str(k): v for k, v in sorted(channels.items())},
        # every depth present, with its count (a folder of 8-bit images with one 16-bit image says so)
        "bit_depth": {str(_BITS.get(k, k)): v for k, v in sorted(dtypes.items(), key=lambda kv: _BITS.get(kv[0], 99))},
        "masks": len(with_mask),
        "empty_masks": empty,
        "boxes": boxes,
        "mask_area_fraction": _quantiles(area),
        "skipped": list(dataset.skipped),
    }


def sheet_selection(samples: list[Sample], n: int) -> list[Sample]:
    """Defects first (they are what people look for), classes taken in turn so every class shows up."""
    by_class: dict[str, list] = {}
    for s in samples:
        by_class.setdefault("~normal" if s.is_normal else (s.class_name or "defect"), []).append(s)
    queues = [by_class[k] for k in sorted(by_class)]
    picked, i = [], 0
    while len(picked) < n and any(i < len(q) for q in queues):
        picked += [q[i] for q in queues if i < len(q) and (q is not by_class.get("~normal") or len(by_class) == 1)]
        i += 1
    if len(picked) < n:  # fill up with normals
        picked += by_class.get("~normal", [])[: n - len(picked)] if len(by_class) > 1 else []
    return picked[:n]


@dataclass(frozen=True)
class InspectOptions:
    """One `defectgen inspect` run. fmt, on_bad: how the set is read. sheet, n_sheet: the contact sheet's path
    (default inspect_<name>.png in the current folder) and how many samples it shows (0: none). against: real
    defects whose KID, diversity and realism the set's generated defects are measured against, with `backbone` at
    `resolution` (or in `tile` tiles at native scale; see `quality_report`). progress: a bar while reading."""

    fmt: str = "auto"
    on_bad: str = "error"
    sheet: Path | None = None
    n_sheet: int = 32
    against: Path | None = None
    backbone: str | None = None
    resolution: int | str = 256
    tile: int | None = None
    progress: bool = False


def inspect_dataset(path: Path, options: InspectOptions | None = None) -> dict[str, Any]:
    """`defectgen inspect`: the dataset summary, a contact sheet and, with `against` real defects, the quality of
    the generated ones (`InspectOptions`)."""
    o = options or InspectOptions()
    sheet, n_sheet = o.sheet, o.n_sheet
    from defectgen.io import open_dataset
    from defectgen.io.files import is_within, made_by_defectgen
    from defectgen.progress import bar

    dataset = open_dataset(path, o.fmt, on_bad=o.on_bad)
    if n_sheet:
        sheet = sheet or Path(f"inspect_{Path(path).resolve().name or 'dataset'}.png")
        if Path(path).is_dir() and not made_by_defectgen(path) and is_within(sheet, path):
            raise DefectgenError(sheet, f"the contact sheet would be written inside the dataset {path}, where it "
                                 "would be read as one of its images; give `sheet` outside it (or run from "
                                 "another folder)")
    samples = list(bar(dataset, total=len(dataset), desc="reading", unit="img", disable=not o.progress))
    summary = dataset_summary(dataset, samples)
    if n_sheet and samples:
        picked = sheet_selection(samples, n_sheet)
        # a generated set (its samples know their normals) also shows each defect enlarged beside its normal
        zoom = any(s.source is not None for s in picked)
        contact_sheet(picked, sheet, columns=4 if zoom else 8, zoom=zoom)
        summary["contact_sheet"] = str(sheet)
    if o.against is not None:
        from defectgen.evaluate.quality import quality_report

        summary["quality"] = quality_report(path, o.against, backbone=o.backbone, resolution=o.resolution,
                                            tile=o.tile)
    return summary


# ---- the files of a `defectgen validate` report: report.md, report.json, roc.png, overlays/ -------------------


def fmt_metric(v: float | None) -> str:
    """A metric with three decimals; undefined (None or NaN) as -."""
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"


def json_safe(obj: Any) -> Any:
    """JSON has no NaN: undefined metrics are written as null (nested dicts and lists too)."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return None if np.isnan(obj) else float(obj)
    return obj


def _per_class_lines(runs: dict[str, Any]) -> list[str]:
    classes = sorted({c for r in runs.values() for c in r["per_class"]})
    if not classes:
        return []
    lines = ["", "Per class (I-AUROC / AUPRO):", "", "| run | " + " | ".join(classes) + " |",
             "|---|" + "---|" * len(classes)]
    for name, r in runs.items():
        cells = [f"{fmt_metric(r['per_class'][c]['image_auroc'])} / {fmt_metric(r['per_class'][c]['aupro'])}"
                 for c in classes]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _coco_lines(runs: dict[str, Any]) -> list[str]:
    coco = {name: r["coco"] for name, r in runs.items() if r.get("coco")}
    if not coco:
        return []
    names = sorted({c for r in coco.values() for c in r["per_class"]})
    header = "| run | mAP@0.5 | mAP@[.5:.95] | agnostic mAP@0.5 | " + " | ".join(f"{c} mAP@0.5" for c in names)
    lines = ["", "COCO box mAP (pycocotools; seg's boxes are its map's connected components, det's its own; "
             "class-agnostic: every box one class):", "", header + " |", "|---|---|---|---|" + "---|" * len(names)]
    for name, r in coco.items():
        spread = runs[name].get("spread", {})
        head = " | ".join(fmt_metric(r[k]) + (f" ± {spread[k]['std']:.3f}" if spread.get(k, {}).get("std")
                                              is not None else "") for k in ("map50", "map", "agnostic_map50"))
        per = " | ".join(fmt_metric(r["per_class"].get(c, {}).get("map50")) for c in names)
        lines.append(f"| {name} | {head} | {per} |")
    return lines


def _training_lines(runs: dict[str, Any]) -> list[str]:
    """How long each run of a detector trained to convergence (det, seg) trained and why it stopped."""
    lines = []
    for name, r in runs.items():
        if "stopped" not in r:
            continue
        best = (f"; best epoch {r['best_epoch']}, validation {r.get('validation_metric', '')} "
                f"{fmt_metric(r['best'])} on {r['validation_images']} images" if r.get("best") is not None else "")
        lines.append(f"- `{name}`: {r['epochs']} epochs on {r['train_images']} images, {r['stopped']}{best}.")
    return ["", "Training:", "", *lines] if lines else []


def markdown_table(results: dict[str, Any]) -> str:
    """The headline table plus per-class image AUROC and AUPRO (and COCO box mAP where measured)."""
    runs, config = results["runs"], results["config"]
    height, width = config["resolution"]
    scale = (f"native scale in {config['tile']}x{config['tile']} tiles" if config.get("tile")
             else f"{height}x{width}")
    lines = [f"# defectgen validate: {config['detector']}", "",
             f"test set `{config['test']}`: {results['test']['normal']} normal, "
             f"{results['test']['defect']} defect images at {scale} (maps and pixel metrics at each image's own "
             f"size); backbone `{config['backbone']}`; {_seeds_text(results)}; wall time "
             f"{results['wall_time_s']:.0f} s.", ""]
    if results.get("summary"):
        lines += ["Verdicts (a win or a loss only beyond twice the standard error of the paired difference):", "",
                  *results["summary"], ""]
    lines += ["| run | I-AUROC | P-AUROC | AUPRO@0.3 | pixel AP | I-F1max | P-F1max | train s |",
              "|---|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        lines.append(f"| {name} | " + " | ".join(_with_spread(r, k) for k in METRICS) + f" | {r['train_s']:.0f} |")
    lines += _per_class_lines(runs) + _coco_lines(runs)
    lines += _training_lines(runs)
    for run, why in results.get("skipped", {}).items():
        lines += ["", f"Skipped `{run}`: {why}."]
    for run, r in runs.items():
        if "pseudo" in r:
            c = r["pseudo"]
            lines += ["", f"Pseudo-labels of `{run}`: {c['kept']} of {c['regions']} regions kept on "
                      f"{c['images_used']} of {c['unlabeled_images']} unlabeled images ({c['dropped_confidence']} "
                      f"below the confidence threshold, {c['dropped_feature']} not defect-like)."]
    if config.get("backbone_pretrained") is False:
        lines[2:2] = ["**Warning: the backbone has random weights (tiny); these metrics are meaningless.**", ""]
    return "\n".join(lines) + "\n"


def _seeds_text(results: dict[str, Any]) -> str:
    seeds = results.get("seeds") or [results["config"]["seed"]]
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"{len(seeds)} seeds ({', '.join(map(str, seeds))}), mean ± std"


def _with_spread(run: dict[str, Any], metric: str) -> str:
    """A metric's mean, with ± its std over seeds where the run has several."""
    spread = run.get("spread", {}).get(metric)
    text = fmt_metric(run["metrics"].get(metric))
    return text if not spread or spread.get("std") is None else f"{text} ± {spread['std']:.3f}"


def write_validation_report(out: Path, results: dict[str, Any]) -> None:
    """report.md and report.json in `out` (results with NaN already made null, see `json_safe`)."""
    atomic_write_text(out / "report.md", markdown_table(results))
    atomic_write_json(out / "report.json", results)


def write_roc(path: Path, test: TestSet, curves: dict[str, dict[str, np.ndarray]]) -> None:
    """Image and pixel ROC curves of every run, side by side, as a PNG (labels, masks: the test set's; each
    curve: a run's scores, maps and metrics)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.5))
    FigureCanvasAgg(fig)  # Agg canvas without touching pyplot's global backend
    for ax, (kind, title) in zip(fig.subplots(1, 2), (("image", "image ROC"), ("pixel", "pixel ROC")),
                                 strict=True):
        for name, c in curves.items():
            fpr, tpr, _ = roc_curve(test.labels if kind == "image" else test.masks,
                                    c["scores"] if kind == "image" else c["maps"])
            if fpr.size > 5000:  # millions of pixel thresholds draw the same line as a few thousand
                keep = np.unique(np.linspace(0, fpr.size - 1, 5000).astype(int))
                fpr, tpr = fpr[keep], tpr[keep]
            ax.plot(fpr, tpr, label=f"{name} ({c['metrics'][kind + '_auroc']:.3f})")
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
        ax.set(title=title, xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1))
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())


def overlay_picks(test: TestSet, n: int, rng: np.random.Generator) -> np.ndarray:
    """Which test images get an overlay: mostly defects (that is what one looks at), one in four normal."""
    defects, normals = np.flatnonzero(test.labels), np.flatnonzero(~test.labels)
    nd = min(len(defects), n - n // 4)
    nn = min(len(normals), n - nd)
    return np.sort(np.r_[rng.choice(defects, nd, replace=False), rng.choice(normals, nn, replace=False)]
                   ).astype(int)


def _overlay(image: np.ndarray, mask: np.ndarray, amap: np.ndarray | None, lo: float, hi: float) -> np.ndarray:
    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image.copy()
    if amap is not None:
        norm = np.clip((amap - lo) / max(hi - lo, 1e-12), 0, 1)
        heat = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
        rgb = cv2.addWeighted(rgb, 0.5, heat, 0.5, 0)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(rgb, contours, -1, (255, 255, 255) if amap is not None else (255, 0, 0), 1)
    return rgb


def _for_display(image: np.ndarray, mask: np.ndarray, maps: list[np.ndarray], most: int = DISPLAY_SIDE
                 ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """An image, its mask and maps, shrunk together so the longer side is at most `most` (else as they are)."""
    h, w = image.shape[:2]
    f = most / max(h, w)
    if f >= 1:
        return image, mask, maps
    nh, nw = max(1, round(h * f)), max(1, round(w * f))
    small = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA).reshape(nh, nw, -1)
    return small, fit_mask(mask, nh, nw), [cv2.resize(m, (nw, nh), interpolation=cv2.INTER_AREA) for m in maps]


def write_overlays(folder: Path, test: TestSet, show: np.ndarray,
                   maps: dict[str, tuple[list[np.ndarray], float, float]]) -> list[str]:
    """One PNG per test image at its own size (shrunk for display past `DISPLAY_SIDE`): the image with its ground
    truth, then each run's map (white: ground truth). maps: per run, the maps of the `show` images (at their
    images' sizes) and the low and high ends of its colour scale."""
    files = []
    for j, i in enumerate(show):
        image, mask, shown = _for_display(test.originals[i], test.masks[i], [m[j] for m, _, _ in maps.values()])
        tiles = [_overlay(image, mask, None, 0, 1)]
        tiles += [_overlay(image, mask, m, lo, hi) for m, (_, lo, hi) in zip(shown, maps.values(), strict=True)]
        strip = np.concatenate([np.pad(t, ((0, 0), (0, 4), (0, 0)), constant_values=255) for t in tiles], axis=1)
        stem = test.paths[i].stem if test.paths[i] is not None else f"{i:04d}"
        name = f"{j:02d}_{test.classes[i]}_{stem}.png"
        write_image(folder / name, strip)
        files.append(f"overlays/{name}")
    if files:
        atomic_write_text(folder / "README.txt", "columns: input with ground truth (red), then " + ", ".join(maps)
                          + " (anomaly map, blue low to red high; white: ground truth)\n")
    return files
