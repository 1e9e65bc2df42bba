"""Measuring verbs: validate (detectors trained with a set, scored on real defects), inspect (what a folder
holds, and how close its generated defects are to real ones) and runs (the workspace index)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from defectgen.cli.common import (
    AsJson,
    Backbone,
    Command,
    Device,
    FeatureDim,
    FeatureTimestep,
    Fmt,
    OnBad,
    Overwrite,
    Resolution,
    Tile,
    app,
    names,
    out,
    record,
    say,
    timesteps,
    workspace,
)
from defectgen.errors import DefectgenError
from defectgen.evaluate.report import fmt_metric

# the options of `validate` (declared here, as common.py declares the shared ones)
# what is trained, on what, scored where
Detector = Annotated[str, typer.Option("--detector", help="ast, exdd (anomaly detectors), seg (supervised "
                                       "segmentation; also box mAP on multi-class test sets) or det (a box "
                                       "detector, scored by box mAP).")]
Train = Annotated[Path | None, typer.Option("--train", help="Normal training images: a folder, or an MVTec root "
                                            "(train/good) (default: the synthetic set's normals; 'none' for seg on "
                                            "a dataset without normal images, such as NEU-DET).")]
Test = Annotated[Path | None, typer.Option("--test", help="Real test set with masks: MVTec layout (test/, "
                                           "ground_truth/) or COCO with masks (default: the MVTec test/ beside the "
                                           "normals' train/good).")]
ReportOut = Annotated[Path | None, typer.Option("--out", help="Report folder: report.json, report.md, roc.png, "
                                                "overlays/ (default: reports/<detector>-N).")]
Synthetic = Annotated[list[Path] | None, typer.Option("--synthetic", help="A synthesized set (annotations.json, "
                                                      "images/, masks/); repeat it to pool several (one per class, "
                                                      "say) (default: the workspace's most recent set, if any; "
                                                      "'none' runs the baselines only).")]
Baselines = Annotated[str, typer.Option("--baselines", help="Comma-separated (or '' for none): none (no defects; "
                                        "ast/exdd only), draem, copypaste (real labeled defects pasted onto "
                                        "normals), real (labeled defects alone; seg), real+synthetic (seg). "
                                        "copypaste, real and real+synthetic need --real-labeled.")]
RealLabeled = Annotated[Path | None, typer.Option("--real-labeled", help="Real labeled defects with masks or boxes, "
                                                  "any layout (an MVTec root: its labeled/ split).")]
# the detectors' training
ValSteps = Annotated[int, typer.Option("--steps", min=1, help="AST: training steps per run; seg: the most steps "
                                       "(early stopping may end sooner).")]
ValBatch = Annotated[int, typer.Option("--batch-size", min=2, help="AST, seg: images per step (half defects).")]
ValLr = Annotated[float, typer.Option("--lr", help="AST, seg, det: Adam learning rate.")]
Epochs = Annotated[int, typer.Option("--epochs", min=1, help="det: most epochs per run; early stopping on a "
                                     "validation split of the training defects ends sooner.")]
Patience = Annotated[int, typer.Option("--patience", min=1, help="det, seg: epochs (passes over the training "
                                       "defects) without a validation gain that stop training.")]
BoxHead = Annotated[str, typer.Option("--box-head", help="det: torchvision's detection model on the backbone's "
                                      "feature pyramid: fcos, retinanet or faster-rcnn.")]
CoresetRatio = Annotated[float, typer.Option("--coreset-ratio", help="ExDD: fraction of normal patches kept in the "
                                             "negative bank (greedy k-center).")]
PositiveQuantile = Annotated[float, typer.Option("--positive-quantile", min=0.0, max=0.9999, help="ExDD: drop "
                                                 "synthetic-defect patches closer to the normal bank than this "
                                                 "quantile of unseen normal patches are (0 keeps all).")]
# the sets' sizes and the report
NDraem = Annotated[int | None, typer.Option("--n-draem", help="draem and copypaste baselines: how many defects "
                                            "(default: as many as --synthetic has, else 100).")]
MaxTrain = Annotated[int | None, typer.Option("--max-train", help="Use a random subset of this many normals.")]
MaxTest = Annotated[int | None, typer.Option("--max-test", help="Use a random subset of this many test images.")]
Overlays = Annotated[int, typer.Option("--overlays", min=0, help="How many test images get anomaly-map overlays.")]
SaveModels = Annotated[bool, typer.Option("--save-models", help="Also save each run's detector (safetensors).")]
# repeats: seeds, and the real-only learning curve
ValSeed = Annotated[int, typer.Option("--seed", help="Seeds subsets, DRAEM defects and training.")]
Seeds = Annotated[int, typer.Option("--seeds", help="Repeat every run with this many seeds (--seed, --seed + 1, "
                                    "...): metrics as mean ± std, and a paired verdict of each run holding the set "
                                    "against each baseline.")]
Curve = Annotated[str | None, typer.Option("--curve", help="Shares of the labeled defects the real run is also "
                                           "trained on, as 0.25,0.5,1.0: the real-only learning curve, on which "
                                           "every run with real defects is placed as a worth in real defects (needs "
                                           "--real-labeled).")]
# --semi: pseudo-labels on unlabeled images (seg)
Semi = Annotated[Path | None, typer.Option("--semi", help="seg: a folder of unlabeled images; each run also trains "
                                           "a RUN+pseudo twin on the pseudo-labels its mean teacher gives them.")]
SemiThreshold = Annotated[float, typer.Option("--semi-threshold", min=0.0, max=1.0, help="--semi: least mean defect "
                                              "probability of a region kept as a pseudo-label.")]
SemiFeatureShare = Annotated[float, typer.Option("--semi-feature-share", min=0.0, max=1.0, help="--semi: least "
                                                 "share of a region's backbone patches nearer a labeled defect "
                                                 "patch than a background one (0: no check).")]
SemiIgnoreAbove = Annotated[float, typer.Option("--semi-ignore-above", min=0.0, max=1.0, help="--semi: pixels at or "
                                                "above this defect probability outside kept regions are left out of "
                                                "the loss.")]


@app.command("validate", cls=Command)
def validate(
    detector: Detector, train: Train = None, test: Test = None, out_dir: ReportOut = None, synthetic: Synthetic =
    None, baselines: Baselines = "none,draem", real_labeled: RealLabeled = None, backbone: Backbone = None,
    feature_timestep: FeatureTimestep = None, feature_dim: FeatureDim = None, resolution: Resolution = "256",
    tile: Tile = None, steps: ValSteps = 1000, batch_size: ValBatch = 8, lr: ValLr = 1e-3, epochs: Epochs = 50,
    patience: Patience = 5, box_head: BoxHead = "fcos", coreset_ratio: CoresetRatio = 0.1, positive_quantile:
    PositiveQuantile = 0.999, n_draem: NDraem = None, max_train: MaxTrain = None, max_test: MaxTest = None,
    overlays: Overlays = 8, device: Device = None, save_models: SaveModels = False, seed: ValSeed = 0, seeds:
    Seeds = 1, curve: Curve = None, semi: Semi = None, semi_threshold: SemiThreshold = 0.7, semi_feature_share:
    SemiFeatureShare = 0.5, semi_ignore_above: SemiIgnoreAbove = 0.3, overwrite: Overwrite = False,
) -> None:
    """Train a detector (AST or ExDD anomaly detectors, the supervised seg model, or the box detector det) with a
    synthetic set and
    with each baseline in one run, and measure all on real defects. Baselines: none (no defects), draem (classic
    DRAEM-style defects, same count), copypaste (the real labeled defects pasted onto normals), real (the labeled
    defects alone, seg) and real+synthetic (labeled defects plus the set, seg).

    Examples:

        defectgen validate --detector exdd --train ../shared/datasets/magnetic-tile --synthetic synth/ \\
            --test ../shared/datasets/magnetic-tile --backbone ../shared/weights/mobilenet_v2_1.0_224 --out report/

        defectgen validate --detector ast --train good/ --test test-set/ --synthetic none --out report/

        defectgen validate --detector seg --train good/ --test test-set/ --synthetic synth/ --real-labeled labeled/ \\
            --baselines real,real+synthetic,copypaste,draem --out report/

        defectgen validate --detector seg --train none --test neu-det --real-labeled labels-20/ --synthetic synth/ \\
            --baselines real,real+synthetic --semi unlabeled/ --out report/

        defectgen validate --detector det --train none --test neu-det --real-labeled neu-det --synthetic none \\
            --baselines real --resolution 224 --epochs 30 --out report/
    """
    from defectgen.evaluate.experiment import run_validation
    from defectgen.workspace import report_record, validate_defaults

    synthetic, train, test, out_dir, notes = validate_defaults(workspace(), detector, synthetic, train, test,
                                                               out_dir)
    say(notes)
    config = _validation_config(
        detector, train, test, out_dir, synthetic=synthetic, baselines=names(baselines), backbone=backbone,
        resolution=resolution, seed=seed, steps=steps, batch_size=batch_size, lr=lr, epochs=epochs,
        patience=patience, coreset_ratio=coreset_ratio, box_head=box_head, n_draem=n_draem, max_train=max_train,
        max_test=max_test, n_overlays=overlays, device=device, overwrite=overwrite, save_models=save_models,
        positive_quantile=positive_quantile or None, real_labeled=real_labeled, tile=tile,
        feature_timesteps=timesteps(feature_timestep), feature_dim=feature_dim, semi=semi, seeds=seeds,
        curve=shares(curve), semi_rule=(semi_threshold, semi_feature_share, semi_ignore_above))
    results = run_validation(config)
    _print_results(config, results)
    record(out_dir, report_record(detector, results["runs"], inputs=_report_inputs(config), params={
        "backbone": backbone, "resolution": results["config"]["resolution"], "tile": tile,
        "baselines": names(baselines), "seed": seed}))


def _validation_config(*args, semi_rule: tuple[float, float, float], **fields):
    """The experiment's one options record, with the CLI's own choices: a progress bar, the --semi-* rule."""
    from defectgen.detect.semi import PseudoLabelRule
    from defectgen.evaluate.experiment import ValidationConfig

    return ValidationConfig(*args, progress=True, semi_rule=PseudoLabelRule(*semi_rule), **fields)


def _report_inputs(config) -> dict:
    """What the report was made from, as its workspace entry records it (a single set as one path)."""
    synthetic = config.synthetic
    return {"train": config.train, "test": config.test, "real_labeled": config.real_labeled,
            "synthetic": synthetic[0] if synthetic and len(synthetic) == 1 else synthetic}


def _print_results(config, results: dict) -> None:
    """The runs table, the summary lines and where the report is."""
    out.print(_runs_table(config.detector, config.test, results))
    for line in results.get("summary", []):
        out.print(line)
    out.print(f"report: {config.out / 'report.md'} ({results['wall_time_s']:.0f} s)")


def shares(text: str | None) -> list[float] | None:
    """`--curve`'s comma-separated shares (checked for range by the experiment)."""
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DefectgenError(None, f"--curve takes shares of the labeled defects as 0.25,0.5,1.0 (got {text!r})"
                             ) from None


def _runs_table(detector: str, test: Path, results: dict) -> Table:
    """One row per run: the metrics, and COCO box mAP@0.5 where the test set has several classes."""
    from defectgen.metrics import METRICS

    table = Table(title=f"{detector} on {test} ({results['test']['normal']} normal, "
                  f"{results['test']['defect']} defect images)")
    table.add_column("run", style="bold")
    for key in METRICS:
        table.add_column(key.replace("_", " "), justify="right")
    with_map = any("coco" in run for run in results["runs"].values())
    if with_map:
        table.add_column("mAP@0.5", justify="right")
    for name, run in results["runs"].items():
        cells = [fmt_metric(run["metrics"].get(k)) for k in METRICS]
        if with_map:
            cells.append(fmt_metric(run.get("coco", {}).get("map50")))
        table.add_row(name, *cells)
    return table


@app.command("inspect", cls=Command)
def inspect(
    path: Path = typer.Argument(..., help="A dataset or output folder (any layout), or a COCO .json file."),
    fmt: Fmt = "auto",
    as_json: AsJson = False,
    sheet: Path | None = typer.Option(None, "--sheet", help="Where to write the contact sheet PNG "
                                         "(default: inspect_<name>.png in the current folder)."),
    n_sheet: int = typer.Option(32, "--sheet-n", min=0, help="How many samples on the contact sheet (0: none)."),
    on_bad: OnBad = "error",
    against: Path | None = typer.Option(None, "--against", help="Real defects (an MVTec folder: its test split; "
                                        "or any set with masks): add KID, diversity and realism of PATH's "
                                        "generated defects against them."),
    backbone: Backbone = None,
    resolution: Resolution = "256",
    tile: Tile = None,
) -> None:
    """Summarise a dataset or output folder: images, sizes, channels, classes, masks, mask areas; contact sheet.

    With --against REAL, also measure the generated defects: KID against real defect crops (lower: closer to
    real), diversity (mean pairwise feature distance; higher: more varied) and realism (I-AUROC / P-AUROC of the
    real test set scored by closeness to the generated defects' patches; above 0.5: real defects resemble them).

    Examples:

        defectgen inspect synth/

        defectgen inspect ../shared/datasets/magnetic-tile --json

        defectgen inspect synth/ --against ../shared/datasets/magnetic-tile --backbone \\
            ../shared/weights/mobilenet_v2_1.0_224
    """
    from defectgen.evaluate.report import InspectOptions, inspect_dataset

    summary = inspect_dataset(path, InspectOptions(fmt=fmt, on_bad=on_bad, sheet=sheet, n_sheet=n_sheet,
                                                   against=against, backbone=backbone, resolution=resolution,
                                                   tile=tile, progress=not as_json))
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    out.print(_summary_table(path, summary))
    if summary["skipped"]:
        out.print(f"skipped {len(summary['skipped'])} unreadable file(s); first: {summary['skipped'][0]}")


def _summary_table(path: Path, summary: dict) -> Table:
    table = Table(title=f"{path} ({summary['format']} layout)", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for key in ("images", "splits", "classes", "sizes", "channels", "bit_depth", "masks", "empty_masks", "boxes",
                "mask_area_fraction", "contact_sheet"):
        value = summary.get(key)
        if isinstance(value, dict):
            items = list(value.items())
            more = f", ... ({len(items)} in all)" if len(items) > 8 else ""
            value = ", ".join(f"{k}: {v}" for k, v in items[:8]) + more
        label = "sizes (HxW)" if key == "sizes" else key.replace("_", " ")
        table.add_row(label, str(value if value not in ("", None) else "-"))
    q = summary.get("quality")
    if q:
        table.add_row("KID vs real", f"{q['kid']:.4f} +- {q['kid_std']:.4f} ({q['generated_samples']} generated, "
                      f"{q['real_defects']} real defect crops)")
        table.add_row("diversity", f"{q['diversity']:.3f} (real defects: {q['diversity_real']:.3f})")
        if "realism" in q:
            r = q["realism"]
            kept = r.get("patches", {})
            table.add_row("realism", f"I-AUROC {fmt_metric(r['image_auroc'])}, "
                          f"P-AUROC {fmt_metric(r.get('pixel_auroc'))} ({kept.get('kept', '-')} of "
                          f"{kept.get('inside', '-')} patches inside the masks unlike the surface)")
        for c, v in q.get("per_class", {}).items():
            table.add_row(f"KID {c}", f"{v['kid']:.4f} +- {v['kid_std']:.4f} ({v['generated']} generated, "
                          f"{v['real']} real)")
    return table


@app.command("runs", cls=Command)
def runs(as_json: AsJson = False) -> None:
    """List this folder's workspace: trained models, synthesized sets and validation reports, newest last.

    Examples:

        defectgen runs

        defectgen runs --json
    """
    from defectgen.workspace import figures_text

    ws = workspace()
    entries = ws.entries()
    if as_json:
        print(json.dumps({"workspace": str(ws.path), "entries": entries}, indent=2))
        return
    if not entries:
        out.print(f"no runs recorded in {ws.root} yet (train-ddpm, train-ldm, synthesize and validate record theirs)")
        return
    table = Table(title=f"workspace {ws.root}")
    for col in ("kind", "type", "path", "created", "key figures"):
        table.add_column(col)
    for e in entries:
        table.add_row(e["kind"], e["type"], e["path"] + ("" if ws.absolute(e["path"]).exists() else " (deleted)"),
                      e["created"].replace("T", " ")[:16], figures_text(e))
    out.print(table)
