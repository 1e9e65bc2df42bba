"""The export verb: a synthesized set, or any dataset defectgen reads, in the layout another tool trains with."""

from __future__ import annotations

from pathlib import Path

import typer

from defectgen.cli.common import Command, Overwrite, app, out


@app.command("export", cls=Command)
def export(
    source: Path = typer.Argument(..., metavar="SET", help="A synthesized set, or any dataset defectgen reads "
                                  "(see --set-format)."),
    format: str = typer.Option(..., "--format", help="yolo (boxes), yolo-seg (polygons traced from the masks), "
                               "mvtec (anomalib's MVTec AD layout) or voc (Pascal VOC boxes)."),
    out_dir: Path = typer.Option(..., "--out", help="Output folder; written whole or not at all."),
    with_normals: Path | None = typer.Option(None, "--with", help="Normal images to add (any layout; its normal "
                                             "images): YOLO background images with empty label files, VOC "
                                             "images without objects, MVTec's train/good and test/good (which "
                                             "mvtec needs when the set has no normals of its own)."),
    val_share: float = typer.Option(0.2, "--val-share", help="Share of each class drawn for val (mvtec: of the "
                                    "normals, for test/good), between 0 and 1."),
    seed: int = typer.Option(0, "--seed", help="Seed of the train/val split."),
    set_format: str = typer.Option("auto", "--set-format", help="Layout of SET: auto, folder, mvtec, pairs, voc, "
                                   "coco, yolo."),
    overwrite: Overwrite = False,
) -> None:
    """Write a set as YOLO, YOLO-seg, MVTec AD (anomalib) or Pascal VOC, with defectgen-export.json naming its source.

    Examples:

        defectgen export synth/ddpm-1 --format yolo --with good/ --out export/yolo

        defectgen export synth/ddpm-1 --format yolo-seg --val-share 0.1 --seed 1 --out export/yolo-seg

        defectgen export synth/ddpm-1 --format mvtec --with good/ --out export/tiles

        defectgen export synth/ddpm-1 --format voc --out export/VOCdevkit/VOC2012

        defectgen export ../shared/datasets/neu-det --format yolo --out export/neu-det-yolo
    """
    from defectgen.io.export import ExportOptions, export_set

    result = export_set(ExportOptions(
        source=source, format=format, out_dir=out_dir, with_normals=with_normals, val_share=val_share, seed=seed,
        set_format=set_format, overwrite=overwrite, progress=True))
    out.print(result.summary(), highlight=False, soft_wrap=True)
