"""The `defectgen` command line: one thin function per verb (parse, call the library, print).

Errors in the user's input surface as one line, `error: <file>: <problem>`, with exit code 2; `--debug` shows
the traceback instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from defectgen import __version__
from defectgen.errors import DefectgenError

app = typer.Typer(
    name="defectgen",
    help="Synthetic defect data for industrial visual inspection: train diffusion generators on normal and "
    "labeled images, paint defects inside masks, write exact COCO annotations, and validate detectors with them.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
)
console = Console(stderr=True)
out = Console()

_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        print(f"defectgen {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    _state["debug"] = debug


def _not_implemented(verb: str, issue: int) -> None:
    console.print(f"defectgen {verb}: not implemented yet (planned in issue {issue}); nothing was done.")
    raise typer.Exit(3)


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        if h <= 0 or w <= 0:
            raise ValueError
    except ValueError:
        raise typer.BadParameter(f"expected HxW such as 256x256, got {text!r}") from None
    return h, w


@app.command("train-ddpm")
def train_ddpm() -> None:
    """Train a DDPM on normal images, or a class- and mask-conditional DDPM on labeled defects.

    Examples:

        defectgen train-ddpm --normals good/ --out runs/ddpm

        defectgen train-ddpm --labeled labeled/ --normals good/ --out runs/cddpm
    """
    _not_implemented("train-ddpm", 3)


@app.command("train-ldm")
def train_ldm() -> None:
    """Fine-tune a text-guided inpainting latent diffusion model on labeled defects.

    Example:

        defectgen train-ldm --labeled labeled/ --prompts prompts/metal.yaml --out runs/ldm
    """
    _not_implemented("train-ldm", 4)


@app.command("synthesize")
def synthesize() -> None:
    """Generate defects inside masks on normal images and write images, masks and COCO annotations.

    Example:

        defectgen synthesize --model runs/ddpm --normals good/ --n 100 --out synth/
    """
    _not_implemented("synthesize", 3)


@app.command("validate")
def validate() -> None:
    """Train an anomaly detector (AST or ExDD) with a synthetic set and measure it on real defects.

    Example:

        defectgen validate --detector ast --train good/ --synthetic synth/ --test test-set/ --out report/
    """
    _not_implemented("validate", 5)


@app.command("masks")
def masks(
    out_dir: Path = typer.Option(..., "--out", help="Output folder: masks/*.png and annotations.json."),
    kind: str = typer.Option("perlin", "--kind", help="perlin or bbox."),
    n: int = typer.Option(16, "--n", min=1, help="How many masks."),
    size: str | None = typer.Option(None, "--size", help="Mask size HxW, e.g. 256x256."),
    like: Path | None = typer.Option(None, "--like", help="Take mask sizes (and foregrounds) from these images."),
    fmt: str = typer.Option("auto", "--format", help="Layout of --like/--like-labeled: auto, folder, "
                            "mvtec, pairs, voc, coco."),
    preset: str | None = typer.Option(None, "--preset", help="A preset name from masks/ (perlin, perlin-small, "
                                         "perlin-large, bbox, scratches) or a YAML path."),
    like_labeled: Path | None = typer.Option(None, "--like-labeled", help="bbox: draw box sizes from the boxes "
                                                "(or mask extents) of this labeled set."),
    shape: str | None = typer.Option(None, "--shape", help="bbox: rect, ellipse or mixed."),
    min_area: float | None = typer.Option(None, "--min-area", help="perlin: smallest mask area (fraction)."),
    max_area: float | None = typer.Option(None, "--max-area", help="perlin: largest mask area (fraction)."),
    threshold: float | None = typer.Option(None, "--threshold", help="perlin: threshold on noise in [-1, 1]."),
    object_only: bool = typer.Option(False, "--object-only", help="Keep masks on the object's foreground "
                                     "(Otsu on each --like image)."),
    category: str = typer.Option("defect", "--category", help="COCO category name for the masks."),
    seed: int = typer.Option(0, "--seed", help="Mask i depends only on (seed, i)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty output folder."),
    on_bad: str = typer.Option("error", "--on-bad", help="error: stop at an unreadable --like image; skip: skip it."),
) -> None:
    """Stamp Perlin or box masks where defects should go, as 0/255 PNGs and a COCO file.

    Examples:

        defectgen masks --kind perlin --n 100 --size 256x256 --seed 0 --out masks/

        defectgen masks --kind perlin --n 100 --like good/ --preset perlin-small --out masks/

        defectgen masks --kind bbox --n 50 --like good/ --like-labeled labeled/ --out boxes/
    """
    from defectgen.masks import MaskGenerator, box_stats_from
    from defectgen.masks.writer import write_mask_set

    if (size is None) == (like is None):
        raise typer.BadParameter("give exactly one of --size HxW or --like DIR")
    options = {"min_area": min_area, "max_area": max_area, "threshold": threshold} if kind == "perlin" else {}
    if kind == "bbox":
        options["shape"] = shape
        if like_labeled is not None:
            from defectgen.io import open_dataset

            stats = box_stats_from(open_dataset(like_labeled, fmt).select(normal=False))
            if not stats:
                raise DefectgenError(like_labeled, "no boxes or masks found to take sizes from")
            options["stats"] = stats
    generator = MaskGenerator(kind, seed=seed, preset=preset, **options)
    params = {"kind": kind, "n": n, "size": size, "like": str(like) if like else None, "preset": preset,
              "like_labeled": str(like_labeled) if like_labeled else None, "object_only": object_only, "seed": seed}
    summary = write_mask_set(
        out_dir, generator, n, size=_parse_size(size) if size else None, like=like, like_format=fmt,
        object_only=object_only, category=category, params=params, overwrite=overwrite, on_bad=on_bad,
    )
    out.print(f"wrote {summary['masks']} masks to {out_dir}/masks and {out_dir}/annotations.json "
              f"(area fraction median {summary['area_median']:.4f}, min {summary['area_min']:.4f}, "
              f"max {summary['area_max']:.4f})")
    if summary["skipped"]:
        out.print(f"skipped {summary['skipped']} unreadable image(s) in {like}")


def _sheet_selection(samples: list, n: int) -> list:
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


@app.command("inspect")
def inspect(
    path: Path = typer.Argument(..., help="A dataset or output folder (any layout), or a COCO .json file."),
    fmt: str = typer.Option("auto", "--format", help="auto, folder, mvtec, pairs, voc, coco."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON instead of a table."),
    sheet: Path | None = typer.Option(None, "--sheet", help="Where to write the contact sheet PNG "
                                         "(default: inspect_<name>.png in the current folder)."),
    n_sheet: int = typer.Option(32, "--sheet-n", min=0, help="How many samples on the contact sheet (0: none)."),
    on_bad: str = typer.Option("error", "--on-bad", help="error: stop at an unreadable image; skip: count it."),
) -> None:
    """Summarise a dataset or output folder: images, sizes, channels, classes, masks, mask areas; contact sheet.

    Examples:

        defectgen inspect synth/

        defectgen inspect ../shared/datasets/magnetic-tile --json
    """
    from defectgen.io import open_dataset
    from defectgen.report import contact_sheet, dataset_summary

    dataset = open_dataset(path, fmt, on_bad=on_bad)
    samples = []
    from tqdm import tqdm

    for s in tqdm(dataset, total=len(dataset), desc="reading", unit="img", disable=as_json or not sys.stderr.isatty()):
        samples.append(s)
    summary = dataset_summary(dataset, samples)
    if n_sheet and samples:
        picked = _sheet_selection(samples, n_sheet)
        sheet = sheet or Path(f"inspect_{path.resolve().name or 'dataset'}.png")
        contact_sheet(picked, sheet)
        summary["contact_sheet"] = str(sheet)
    if as_json:
        print(json.dumps(summary, indent=2))
        return
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
    out.print(table)
    if summary["skipped"]:
        out.print(f"skipped {len(summary['skipped'])} unreadable file(s); first: {summary['skipped'][0]}")


def main() -> None:
    """Console entry point: one-line errors with exit code 2 unless --debug."""
    debug = "--debug" in sys.argv[1:]
    try:
        app(standalone_mode=False)
    except DefectgenError as e:
        if debug:
            raise
        console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        console.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        console.print("interrupted; files already written are complete (writes are atomic)")
        sys.exit(130)
    except Exception as e:  # click usage errors carry their own exit code
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if debug:
            raise
        console.print(f"[red]error:[/red] {type(e).__name__}: {e} (run with --debug for the traceback)",
                      highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
