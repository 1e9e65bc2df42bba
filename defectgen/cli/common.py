"""What every verb shares: the Typer app, the consoles, the options declared once (each verb sets its own
default), and the small parsers and printers the verbs call."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console


class _UntypedFlags:
    """Help without a type after value-less flags (--overwrite, --ema/--no-ema, --help): typer >= 0.20's rich help
    prints <bool> there, in the column that shows an option's metavar, so each flag gets an empty metavar.
    Used explicitly: the app is a `Group`, every verb a `Command` (tests/test_cli.py checks each verb's help)."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and not getattr(param, "count", False) and param.metavar is None:
                param.metavar = ""
        return params


class Command(_UntypedFlags, typer.core.TyperCommand):
    pass


class Group(_UntypedFlags, typer.core.TyperGroup):
    pass


app = typer.Typer(
    cls=Group,
    name="defectgen",
    help="Synthetic defect data for industrial visual inspection: train diffusion generators on normal and "
    "labeled images, paint defects inside masks, write exact COCO annotations, and validate detectors with them.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)

console = Console(stderr=True)
out = Console()

OVERWRITE_HELP = ("Clear a non-empty --out first; only a folder defectgen made (it holds a .defectgen-*.json "
                  "marker), never one with other files, an input or the model.")

Overwrite = Annotated[bool, typer.Option("--overwrite", help=OVERWRITE_HELP)]
Device = Annotated[str | None, typer.Option("--device", help="cuda, cuda:1, cpu, ... (default: a GPU if there "
                                            "is one).")]
Fmt = Annotated[str, typer.Option("--format", help="Layout of the input: auto, folder, mvtec, pairs, voc, coco, yolo.")]
OnBad = Annotated[str, typer.Option("--on-bad", help="error: stop at an unreadable image; skip: skip it.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
Backbone = Annotated[str | None, typer.Option("--backbone", help="Feature extractor: a transformers folder or hub "
                                              "id, e.g. ../shared/weights/mobilenet_v2_1.0_224, or tiny (random "
                                              "weights, for tests only) (default: $DEFECTGEN_BACKBONE, else "
                                              "google/mobilenet_v2_1.0_224, downloaded once; set it for a "
                                              "workspace with 'backbone: FOLDER' in defectgen.yaml).")]
FeatureTimestep = Annotated[list[str] | None, typer.Option(
    "--feature-timestep", help="With a DDPM run folder as --backbone: the noise timestep its features are taken "
    "at, in [0, T) (T = 1000 for defectgen's DDPMs); repeat it or give a comma list to average several "
    "(default: 100).")]
FeatureDim = Annotated[int | None, typer.Option(
    "--feature-dim", min=1, help="With a DDPM run folder as --backbone: channels each decoder level is "
    "PCA-projected to, fitted on the normals, before the ExDD memory bank (default: 32).")]
# --resolution means a different thing to a detector and to a generator: each verb says what it does there.
Resolution = Annotated[str | None, typer.Option("--resolution", help=(
    "Detector input: HxW (each a multiple of 32, e.g. 256x640), or one number N, the short side with each image's "
    "aspect kept (the long side rounded to a multiple of 32; a set of mixed sizes takes its most common size). "
    "Anomaly maps, overlays and pixel metrics come back at each image's own size."))]
DdpmResolution = Annotated[str | None, typer.Option("--resolution", help=(
    "Side of the square training windows, cut at native scale (N or NxN): a multiple of 4 for the tiny preset, 8 "
    "for small and base (default: the smallest image side, at most 256, rounded down to that multiple)."))]
LdmResolution = Annotated[str | None, typer.Option("--resolution", help=(
    "Side of the square windows cut at native scale around the masks (N or NxN, a multiple of 8) (default: the "
    "base pipeline's own size; 64 for --base tiny)."))]
Tile = Annotated[int | None, typer.Option("--tile", help="Score images at native scale in overlapping NxN tiles "
                                          "(stride N/2, maps averaged where they overlap; N a multiple of 32), for "
                                          "images larger than the model; training takes random NxN crops. "
                                          "--resolution is then not used.")]
# training: train-ddpm, train-ldm
Steps = Annotated[int, typer.Option("--steps", min=1, help="Optimizer steps.")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Images per device per micro-step.")]
Lr = Annotated[float, typer.Option("--lr", help="Peak learning rate (cosine schedule after warm-up).")]
Warmup = Annotated[int, typer.Option("--warmup", min=0, help="Learning-rate warm-up steps.")]
MixedPrecision = Annotated[str, typer.Option("--mixed-precision", help="no, fp16 or bf16.")]
GradAccum = Annotated[int, typer.Option("--grad-accum", min=1, help="Gradient accumulation micro-steps.")]
Ema = Annotated[bool, typer.Option("--ema/--no-ema", help="Keep and save an EMA of the weights.")]
CheckpointEvery = Annotated[int, typer.Option("--checkpoint-every", min=0, help="Checkpoint every N steps; left at "
                                              "its default, every tenth of the run when that comes sooner; 0: by "
                                              "time only (--checkpoint-minutes).")]
Tensorboard = Annotated[bool, typer.Option("--tensorboard", help="Log to --out/logs for TensorBoard.")]
TrainSeed = Annotated[int, typer.Option("--seed", help="Seed for initialisation, data order, noise.")]
TrainResume = Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint in --out.")]
TrustCheckpoint = Annotated[bool, typer.Option("--trust-checkpoint", help="--resume: also load a checkpoint that "
                                               "holds pickle files (older defectgen, accelerate); only one you "
                                               "made yourself: unpickling can run code.")]
# filters: synthesize --filter ..., filter
Filters = Annotated[str | None, typer.Option(
    "--filter", help="Comma-separated filters: change (see --min-change), clip (see --clip-model, --tau0, "
    "--lambda).")]
ClipModel = Annotated[str | None, typer.Option("--clip-model", help="CLIP folder or hub id for the clip filter.")]
Tau0 = Annotated[float, typer.Option("--tau0", help="clip: starting threshold on P(defect text).")]
Lam = Annotated[float, typer.Option(
    "--lambda", help="clip: decay of the threshold over the set, tau_t = tau0 * exp(-lambda * t / T).")]
AllowEmpty = Annotated[bool, typer.Option(
    "--allow-empty", help="Let the filters remove every sample (otherwise that is an error and nothing changes).")]
MinChange = Annotated[float, typer.Option(
    "--min-change", help="change: least mean absolute change inside the mask (0-1 intensity).")]


def flags(text: str) -> str:
    """`out_dir` -> --out: the library names parameters, the user typed flags."""
    commands = getattr(typer.main.get_command(app), "commands", {})
    by_name = {p.name: p.opts[0] for c in commands.values() for p in c.params if p.param_type_name == "option"}
    return re.sub(r"`(\w+)`", lambda m: by_name.get(m.group(1), m.group(0)), text)


def say(notes: list[str] | str) -> None:
    """Every default taken from the workspace is said in one line."""
    for line in [notes] if isinstance(notes, str) else notes:
        console.print(flags(line), highlight=False, soft_wrap=True)


def workspace():
    from defectgen.workspace import Workspace

    return Workspace()


def output(out_dir: Path | None, kind: str, stem: str, resume: bool = False) -> Path:
    """--out, or the workspace's next free folder for this kind of run (said on stderr)."""
    from defectgen.workspace import output_folder

    out_dir, notes = output_folder(workspace(), out_dir, kind, stem, resume)
    say(notes)
    return out_dir


def record(path: Path, entry: dict) -> None:
    """Add a run's entry (made by workspace.model_record, set_record or report_record) to the workspace index."""
    from accelerate import PartialState

    if PartialState().is_main_process:  # one record per run, also under `accelerate launch`
        workspace().record(path=path, **entry)


def names(text: str | None) -> list[str]:
    return [f.strip() for f in (text or "").split(",") if f.strip()]


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        k, total = (int(v) for v in text.split("/"))
        if not 0 <= k < total:
            raise ValueError
    except ValueError:
        raise typer.BadParameter(f"expected K/N with 0 <= K < N, such as 0/2, got {text!r}") from None
    return k, total


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        if h <= 0 or w <= 0:
            raise ValueError
    except ValueError:
        raise typer.BadParameter(f"expected HxW such as 256x256, got {text!r}") from None
    return h, w


def timesteps(values: list[str] | None) -> list[int] | None:
    """--feature-timestep values, repeated and/or comma-separated, as integers (None when not given)."""
    if not values:
        return None
    try:
        return [int(v) for item in values for v in item.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"integers expected, got {', '.join(values)}",
                                 param_hint="--feature-timestep") from None
