"""The `defectgen` command line: one thin function per verb (parse, call the library, print).

Errors in the user's input surface as one line, `error: <file>: <problem>`, with exit code 2; `--debug` shows
the traceback instead. Library errors and notes name parameters in backticks (`out_dir`); they are shown here as
the verb's flags (--out).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Annotated

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
    rich_markup_mode="rich",
)
if hasattr(typer.core.TyperOption, "display_type_rich"):  # typer >= 0.20 prints "<bool>" after value-less flags
    _display_type_rich = typer.core.TyperOption.display_type_rich
    typer.core.TyperOption.display_type_rich = lambda self, ctx: (
        None if self.is_flag and not self.count else _display_type_rich(self, ctx))

console = Console(stderr=True)
out = Console()

OVERWRITE_HELP = ("Clear a non-empty --out first; only a folder defectgen made (it holds a .defectgen-*.json "
                  "marker), never one with other files, an input or the model.")

# Options shared by several verbs, declared once (each verb sets its own default).
Overwrite = Annotated[bool, typer.Option("--overwrite", help=OVERWRITE_HELP)]
# training: train-ddpm, train-ldm
Steps = Annotated[int, typer.Option("--steps", min=1, help="Optimizer steps.")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Images per device per micro-step.")]
Lr = Annotated[float, typer.Option("--lr", help="Peak learning rate (cosine schedule after warm-up).")]
Warmup = Annotated[int, typer.Option("--warmup", min=0, help="Learning-rate warm-up steps.")]
MixedPrecision = Annotated[str, typer.Option("--mixed-precision", help="no, fp16 or bf16.")]
GradAccum = Annotated[int, typer.Option("--grad-accum", min=1, help="Gradient accumulation micro-steps.")]
Ema = Annotated[bool, typer.Option("--ema/--no-ema", help="Keep and save an EMA of the weights.")]
CheckpointEvery = Annotated[int, typer.Option("--checkpoint-every", min=0, help="Checkpoint every N steps.")]
Tensorboard = Annotated[bool, typer.Option("--tensorboard", help="Log to --out/logs for TensorBoard.")]
TrainSeed = Annotated[int, typer.Option("--seed", help="Seed for initialisation, data order, noise.")]
TrainResume = Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint in --out.")]
# filters: synthesize --filter ..., filter
Filters = Annotated[str | None, typer.Option(
    "--filter", help="Comma-separated filters: change (see --min-change), clip (see --clip-model, --tau0, "
    "--lambda).")]
ClipModel = Annotated[str | None, typer.Option("--clip-model", help="CLIP folder or hub id for the clip filter.")]
Tau0 = Annotated[float, typer.Option("--tau0", help="clip: starting threshold on P(defect text).")]
Lam = Annotated[float, typer.Option(
    "--lambda", help="clip: decay of the threshold over the set, tau_t = tau0 * exp(-lambda * t / T).")]
MinChange = Annotated[float, typer.Option(
    "--min-change", help="change: least mean absolute change inside the mask (0-1 intensity).")]


def _version(value: bool) -> None:
    if value:
        print(f"defectgen {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    pass  # --debug is read by main() from the command line itself


def _flags(text: str) -> str:
    """`out_dir` -> --out: the library names parameters, the user typed flags."""
    commands = getattr(typer.main.get_command(app), "commands", {})
    flags = {p.name: p.opts[0] for c in commands.values() for p in c.params if p.param_type_name == "option"}
    return re.sub(r"`(\w+)`", lambda m: flags.get(m.group(1), m.group(0)), text)


def _say(notes: list[str] | str) -> None:
    """Every default taken from the workspace is said in one line."""
    for line in [notes] if isinstance(notes, str) else notes:
        console.print(_flags(line), highlight=False, soft_wrap=True)


def _workspace():
    from defectgen.workspace import Workspace

    return Workspace()


def _out(out_dir: Path | None, kind: str, stem: str, resume: bool = False) -> Path:
    from defectgen.workspace import output_folder

    out_dir, notes = output_folder(_workspace(), out_dir, kind, stem, resume)
    _say(notes)
    return out_dir


def _train_config(mixed_precision: str, **fields):
    from defectgen.diffusion.training import TrainConfig

    if mixed_precision not in ("no", "fp16", "bf16"):
        raise typer.BadParameter("--mixed-precision must be no, fp16 or bf16")
    return TrainConfig(mixed_precision=mixed_precision, **fields)


def _record(kind: str, path: Path, **fields) -> None:
    from accelerate import PartialState

    if PartialState().is_main_process:  # one record per run, also under `accelerate launch`
        _workspace().record(kind, path, **fields)


def _names(text: str | None) -> list[str]:
    return [f.strip() for f in (text or "").split(",") if f.strip()]


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        k, total = (int(v) for v in text.split("/"))
        if not 0 <= k < total:
            raise ValueError
    except ValueError:
        raise typer.BadParameter(f"expected K/N with 0 <= K < N, such as 0/2, got {text!r}") from None
    return k, total


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        if h <= 0 or w <= 0:
            raise ValueError
    except ValueError:
        raise typer.BadParameter(f"expected HxW such as 256x256, got {text!r}") from None
    return h, w


@app.command("train-ddpm")
def train_ddpm(
    out_dir: Path | None = typer.Option(None, "--out", help="Run folder: the diffusers model, defectgen.json, "
                                        "checkpoints/ (default: runs/ddpm-N or runs/cddpm-N)."),
    normals: Path | None = typer.Option(None, "--normals", help="Normal images (a folder, or MVTec: train/good)."),
    labeled: Path | None = typer.Option(None, "--labeled", help="Labeled defects (pairs, MVTec, VOC or COCO): "
                                        "trains the class- and mask-conditional model."),
    preset: str = typer.Option("small", "--preset", help="UNet size: tiny (CPU tests), small, base (~35M)."),
    resolution: int | None = typer.Option(None, "--resolution", help="Training side in pixels (default: the "
                                          "shortest image side, at most 256)."),
    steps: Steps = 20000, batch_size: BatchSize = 16, lr: Lr = 1e-4, warmup: Warmup = 500,
    mixed_precision: MixedPrecision = "no", grad_accum: GradAccum = 1, ema: Ema = True,
    checkpoint_every: CheckpointEvery = 1000, resume: TrainResume = False,
    crop: str = typer.Option("random", "--crop", help="Larger images: random crops or resize."),
    class_dropout: float = typer.Option(0.1, "--class-dropout", help="Conditional: rate of the null class "
                                        "(for classifier-free guidance)."),
    tensorboard: Tensorboard = False,
    workers: int = typer.Option(0, "--workers", min=0, help="Data-loading worker processes."),
    seed: TrainSeed = 0, overwrite: Overwrite = False,
) -> None:
    """Train a DDPM on normal images, or a class- and mask-conditional DDPM on labeled defects.

    Examples:

        defectgen train-ddpm --normals good/ --out runs/ddpm

        defectgen train-ddpm --labeled labeled/ --normals good/ --out runs/cddpm --preset base --mixed-precision bf16

        defectgen train-ddpm --normals good/ --out runs/ddpm --resume

        accelerate launch -m defectgen.cli train-ddpm --normals good/ --out runs/ddpm
    """
    from defectgen.diffusion.ddpm import train_ddpm as train

    cfg = _train_config(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup,
                        mixed_precision=mixed_precision, grad_accum=grad_accum, ema=ema,
                        checkpoint_every=checkpoint_every, tensorboard=tensorboard, seed=seed, num_workers=workers)
    out_dir = _out(out_dir, "model", "cddpm" if labeled else "ddpm", resume)
    model = train(out_dir, normals, labeled, preset=preset, resolution=resolution, crop=crop,
                  class_dropout=class_dropout, config=cfg, resume=resume, overwrite=overwrite, log=console.print)
    result = model.meta.get("result", {})
    _record("model", out_dir, type=model.kind, inputs={"normals": normals, "labeled": labeled},
            params={"preset": preset, "resolution": model.resolution, "steps": steps, "batch_size": batch_size,
                    "seed": seed},
            figures={"steps": steps, "final_loss": result.get("final_loss"), "classes": model.class_names})
    out.print(f"saved {model.kind} model ({model.resolution}x{model.resolution}, {model.channels} channel(s)"
              + (f", classes: {', '.join(model.class_names)}" if model.class_names else "") + f") to {out_dir}")


@app.command("train-ldm")
def train_ldm(
    labeled: Path = typer.Option(..., "--labeled", help="Labeled defects with masks (pairs, MVTec labeled/, COCO, "
                                 "VOC boxes)."),
    out_dir: Path | None = typer.Option(None, "--out", help="Run folder: a diffusers inpainting pipeline + "
                                        "defectgen.json (default: runs/ldm-N)."),
    base: str = typer.Option("tiny", "--base", help="'tiny' (built from scratch, offline), or a diffusers inpainting "
                             "folder or hub id such as a Stable Diffusion inpainting model."),
    prompts: Path | None = typer.Option(None, "--prompts", help="Prompt file (e.g. "
                                        "defectgen/data/prompts/tile.yaml): captions from the class names."),
    lora_rank: int = typer.Option(0, "--lora-rank", min=0, help="LoRA rank through peft (0: full fine-tuning)."),
    train_text_encoder: bool = typer.Option(False, "--train-text-encoder", help="Also train the text encoder "
                                            "(frozen by default)."),
    preset: str = typer.Option("tiny", "--preset", help="Size of a --base tiny model: tiny or small."),
    resolution: int | None = typer.Option(None, "--resolution", help="Training resolution (multiple of 8; default "
                                          "64 for tiny, the base model's own otherwise)."),
    tokenizer: Path | None = typer.Option(None, "--tokenizer", help="CLIP tokenizer folder for --base tiny, e.g. "
                                          "../shared/weights/clip-tokenizer (default: a byte-level one)."),
    vae_steps: int = typer.Option(2000, "--vae-steps", min=1, help="--base tiny: VAE training steps first."),
    steps: Steps = 5000, batch_size: BatchSize = 8, lr: Lr = 1e-4, warmup: Warmup = 100,
    mixed_precision: MixedPrecision = "no", grad_accum: GradAccum = 1, ema: Ema = True,
    checkpoint_every: CheckpointEvery = 500, tensorboard: Tensorboard = False,
    fmt: str = typer.Option("auto", "--format", help="Layout of --labeled."),
    seed: TrainSeed = 0, resume: TrainResume = False, overwrite: Overwrite = False,
) -> None:
    """Fine-tune a text-guided inpainting latent diffusion model on labeled defects with their real masks.

    Examples:

        defectgen train-ldm --labeled labeled/ --prompts defectgen/data/prompts/tile.yaml --out runs/ldm

        defectgen train-ldm --labeled labeled/ --base path/to/sd-inpainting --lora-rank 8 --out runs/ldm-lora
    """
    from defectgen.diffusion.ldm import train_ldm as train

    cfg = _train_config(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup,
                        mixed_precision=mixed_precision, grad_accum=grad_accum, ema=ema,
                        checkpoint_every=checkpoint_every, tensorboard=tensorboard, seed=seed)
    out_dir = _out(out_dir, "model", "ldm", resume)
    meta = train(labeled, out_dir, cfg, base=base, preset=preset, prompts=prompts, lora_rank=lora_rank,
                 resolution=resolution, tokenizer=tokenizer, vae_steps=vae_steps,
                 train_text_encoder=train_text_encoder, fmt=fmt, resume=resume, overwrite=overwrite,
                 log=console.print)
    _record("model", out_dir, type="ldm", inputs={"labeled": labeled, "base": base, "prompts": prompts},
            params={"preset": preset, "resolution": meta["resolution"], "steps": steps, "lora_rank": lora_rank,
                    "seed": seed},
            figures={"steps": steps, "final_loss": meta.get("final_loss"), "classes": meta["classes"]})
    out.print(f"saved inpainting LDM ({meta['resolution']}x{meta['resolution']}, classes: "
              f"{', '.join(meta['classes'])}, final loss {meta.get('final_loss') or float('nan'):.4f}) to {out_dir}")


@app.command("filter")
def filter_set(
    out_dir: Path = typer.Argument(..., help="A synthesize output folder."),
    filters: Filters = "change", clip_model: ClipModel = None, tau0: Tau0 = 0.5, lam: Lam = 1.0,
    min_change: MinChange = 0.02,
    material: str | None = typer.Option(None, "--material", help="clip: the material named in the normal text."),
) -> None:
    """Remove generated samples that a filter rejects; they move to OUT/rejected/ with their scores.

    Examples:

        defectgen filter synth/ --filter change

        defectgen filter synth/ --filter clip,change --clip-model openai/clip-vit-base-patch32 --tau0 0.6
    """
    from defectgen.synth.run import filter_set as run

    run(out_dir, _names(filters), clip_model=clip_model, tau0=tau0, lam=lam, min_change=min_change,
        material=material, log=out.print)


@app.command("synthesize")
def synthesize(
    model: str | None = typer.Option(None, "--model", help="A trained model folder (train-ddpm, train-ldm), a "
                                     "diffusers inpainting folder or hub id, draem, or copypaste (with --labeled) "
                                     "(default: the workspace's most recent model that fits)."),
    normals: Path | None = typer.Option(None, "--normals", help="Normal images to paint defects on (default: "
                                        "those the model was trained with)."),
    n: int = typer.Option(100, "--n", min=1, help="How many samples."),
    out_dir: Path | None = typer.Option(None, "--out", help="Output folder: images/, masks/, annotations.json "
                                        "(default: synth/<model>-N)."),
    masks: str = typer.Option("perlin", "--masks", help="perlin, bbox, or a folder of masks (used in name "
                              "order; each must match its normal image's size)."),
    mask_preset: str | None = typer.Option(None, "--mask-preset", help="Mask preset "
                                            "(defectgen/data/masks/) or a YAML path."),
    masks_from: Path | None = typer.Option(None, "--masks-from", help="Instead of --masks: reuse the masks (or "
                                           "boxes) of the real defects in this labeled set, each of the sample's "
                                           "class, resized to the normal image and randomly flipped."),
    class_name: str | None = typer.Option(None, "--class", help="Defect class (conditional models; default: "
                                          "drawn from the training classes). COCO category otherwise."),
    prompt: str | None = typer.Option(None, "--prompt", help="Text-guided models: free text, or material/defect "
                                      "from the prompt library (defectgen/data/prompts/), e.g. tile/crack."),
    negative_prompt: str | None = typer.Option(None, "--negative-prompt", help="Text-guided models (default: the "
                                               "prompt library's negative prompt)."),
    mask_crop: int | None = typer.Option(None, "--mask-crop", min=0, help="Text-guided models: generate in the "
                                         "mask's extent padded by PAD pixels at model resolution (diffusers' "
                                         "padding_mask_crop) instead of a model-sized window."),
    textures: Path | None = typer.Option(None, "--textures", help="--model draem: texture images (default: the "
                                         "normals themselves)."),
    labeled: Path | None = typer.Option(None, "--labeled", help="--model copypaste: the labeled set whose real "
                                        "defects (masks or boxes) are pasted, augmented, onto the normals."),
    blend: str | None = typer.Option(None, "--blend", help="--model copypaste: paste (default) or seamless "
                                     "(Poisson blending)."),
    filters: Filters = None, clip_model: ClipModel = None, tau0: Tau0 = 0.5, lam: Lam = 1.0,
    min_change: MinChange = 0.02,
    strength: float | None = typer.Option(None, "--strength", help="Unconditional DDPM: t0/T, how far the normal "
                                          "image is diffused (default 0.5)."),
    sigma: float | None = typer.Option(None, "--sigma", help="Unconditional DDPM: std of the extra noise inside "
                                       "the mask (default 1.0)."),
    guidance: float | None = typer.Option(None, "--guidance", help="Conditional: classifier-free guidance "
                                          "scale (default 3.0)."),
    sampler: str | None = typer.Option(None, "--sampler", help="ddpm, ddim or dpm (default ddim)."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Sampling steps (default ddpm 1000, ddim 50, "
                                     "dpm 20)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Samples per generator call."),
    device: str | None = typer.Option(None, "--device", help="cuda, cpu, ... (default: a GPU if there is one)."),
    seed: int = typer.Option(0, "--seed", help="Sample i depends only on (seed, i)."),
    shard: str | None = typer.Option(None, "--shard", help="K/N: write only samples i with i % N == K into --out "
                                     "(set automatically under `accelerate launch`); the shard that completes "
                                     "the set writes annotations.json."),
    resume: bool = typer.Option(False, "--resume", help="Complete an interrupted run in --out."),
    overwrite: Overwrite = False,
) -> None:
    """Generate defects inside masks on normal images and write images, masks and COCO annotations.

    Examples:

        defectgen synthesize --model runs/ddpm --normals good/ --n 100 --out synth/

        defectgen synthesize --model runs/ddpm --normals good/ --n 100 --strength 0.6 --sigma 1.5 --out synth/

        defectgen synthesize --model runs/cddpm --normals good/ --n 100 --masks bbox --class scratch --guidance 3 \\
            --sampler dpm --steps 20 --out synth/

        defectgen synthesize --model runs/ldm --normals good/ --n 100 --prompt "copper scratches" --out synth/

        defectgen synthesize --model draem --normals good/ --n 100 --out synth-draem/

        defectgen synthesize --model runs/cddpm --normals good/ --n 100 --masks-from labeled/ --out synth/

        defectgen synthesize --model copypaste --labeled labeled/ --normals good/ --n 100 --out synth-copypaste/
    """
    from defectgen.synth.run import synthesize_set

    run = synthesize_set(
        model, normals, n, out_dir, masks=masks, mask_preset=mask_preset, masks_from=masks_from,
        class_name=class_name, prompt=prompt, filters=_names(filters), clip_model=clip_model, tau0=tau0, lam=lam,
        min_change=min_change, seed=seed, batch_size=batch_size, shard=_parse_shard(shard), resume=resume,
        overwrite=overwrite, progress=sys.stderr.isatty(), note=_say, log=out.print, sampler=sampler, steps=steps,
        strength=strength, sigma=sigma, guidance=guidance, negative_prompt=negative_prompt, mask_crop=mask_crop,
        textures=textures, labeled=labeled, blend=blend, device=device)
    if run.record is not None:
        _record("set", run.out_dir, **run.record)


@app.command("validate")
def validate(
    detector: str = typer.Option(..., "--detector", help="ast, exdd (anomaly detectors) or seg (supervised "
                                 "segmentation; also box mAP on multi-class test sets)."),
    train: Path | None = typer.Option(None, "--train", help="Normal training images: a folder, or an MVTec root "
                                      "(train/good) (default: the synthetic set's normals; 'none' for seg on a "
                                      "dataset without normal images, such as NEU-DET)."),
    test: Path | None = typer.Option(None, "--test", help="Real test set with masks: MVTec layout (test/, "
                                     "ground_truth/) or COCO with masks (default: the MVTec test/ beside the "
                                     "normals' train/good)."),
    out_dir: Path | None = typer.Option(None, "--out", help="Report folder: report.json, report.md, roc.png, "
                                        "overlays/ (default: reports/<detector>-N)."),
    synthetic: list[Path] | None = typer.Option(None, "--synthetic", help="A synthesized set (annotations.json, "
                                                   "images/, masks/); repeat it to pool several (one per class, "
                                                   "say) (default: the workspace's most recent set, if any; "
                                                   "'none' runs the baselines only)."),
    baselines: str = typer.Option("none,draem", "--baselines", help="Comma-separated (or '' for none): none (no "
                                  "defects; ast/exdd only), draem, copypaste (real labeled defects pasted onto "
                                  "normals), real (labeled defects alone; seg), real+synthetic (seg). copypaste, "
                                  "real and real+synthetic need --real-labeled."),
    real_labeled: Path | None = typer.Option(None, "--real-labeled", help="Real labeled defects with masks or "
                                             "boxes, any layout (an MVTec root: its labeled/ split)."),
    backbone: str = typer.Option("tiny", "--backbone", help="transformers model folder or hub id, or tiny "
                                 "(random weights, for tests), e.g. ../shared/weights/mobilenet_v2_1.0_224."),
    resolution: int = typer.Option(256, "--resolution", help="Images are resized to this square side."),
    steps: int = typer.Option(1000, "--steps", min=1, help="AST, seg: training steps per run."),
    batch_size: int = typer.Option(8, "--batch-size", min=2, help="AST, seg: images per step (half defects)."),
    lr: float = typer.Option(1e-3, "--lr", help="AST, seg: Adam learning rate."),
    coreset_ratio: float = typer.Option(0.1, "--coreset-ratio", help="ExDD: fraction of normal patches kept in "
                                        "the negative bank (greedy k-center)."),
    positive_quantile: float = typer.Option(0.999, "--positive-quantile", min=0.0, max=0.9999,
                                            help="ExDD: drop synthetic-defect patches closer to the normal bank "
                                            "than this quantile of unseen normal patches are (0 keeps all)."),
    n_draem: int | None = typer.Option(None, "--n-draem", help="draem and copypaste baselines: how many "
                                          "defects (default: as many as --synthetic has, else 100)."),
    max_train: int | None = typer.Option(None, "--max-train", help="Use a random subset of this many normals."),
    max_test: int | None = typer.Option(None, "--max-test", help="Use a random subset of this many test images."),
    overlays: int = typer.Option(8, "--overlays", min=0, help="How many test images get anomaly-map overlays."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: cuda if present)."),
    save_models: bool = typer.Option(False, "--save-models", help="Also save each run's detector (safetensors)."),
    seed: int = typer.Option(0, "--seed", help="Seeds subsets, DRAEM defects and training."),
    overwrite: Overwrite = False,
) -> None:
    """Train a detector (AST or ExDD anomaly detectors, or the supervised seg model) with a synthetic set and
    with each baseline in one run, and measure all on real defects. Baselines: none (no defects), draem (classic
    DRAEM-style defects, same count), copypaste (the real labeled defects pasted onto normals), real (the labeled
    defects alone, seg) and real+synthetic (labeled defects plus the set, seg).

    Examples:

        defectgen validate --detector ast --train good/ --synthetic synth/ --test test-set/ --out report/

        defectgen validate --detector exdd --train ../shared/datasets/magnetic-tile --synthetic synth/
        --test ../shared/datasets/magnetic-tile --backbone ../shared/weights/mobilenet_v2_1.0_224 --out report/

        defectgen validate --detector exdd --train good/ --test test-set/ --synthetic none --out report/

        defectgen validate --detector seg --train good/ --test test-set/ --synthetic synth/ --real-labeled labeled/
        --baselines real,real+synthetic,copypaste,draem --out report/
    """
    from defectgen.detect.validate import METRICS, run_validation
    from defectgen.workspace import validate_defaults

    synthetic, train, test, out_dir, notes = validate_defaults(_workspace(), detector, synthetic, train, test,
                                                               out_dir)
    _say(notes)
    names = _names(baselines)
    results = run_validation(
        detector, train, test, out_dir, synthetic=synthetic, baselines=names, backbone=backbone,
        resolution=resolution, seed=seed, steps=steps, batch_size=batch_size, lr=lr, coreset_ratio=coreset_ratio,
        n_draem=n_draem, max_train=max_train, max_test=max_test, n_overlays=overlays, device=device,
        overwrite=overwrite, progress=sys.stderr.isatty(), save_models=save_models,
        positive_quantile=positive_quantile or None, real_labeled=real_labeled,
    )
    table = Table(title=f"{detector} on {test} ({results['test']['normal']} normal, "
                  f"{results['test']['defect']} defect images)")
    table.add_column("run", style="bold")
    for key in METRICS:
        table.add_column(key.replace("_", " "), justify="right")
    with_map = any("coco" in run for run in results["runs"].values())
    if with_map:
        table.add_column("mAP@0.5", justify="right")
    for name, run in results["runs"].items():
        cells = ["-" if run["metrics"].get(k) is None else f"{run['metrics'][k]:.3f}" for k in METRICS]
        if with_map:
            cells.append(f"{run['coco']['map50']:.3f}" if run.get("coco", {}).get("map50") is not None else "-")
        table.add_row(name, *cells)
    out.print(table)
    out.print(f"report: {out_dir / 'report.md'} ({results['wall_time_s']:.0f} s)")
    figures = {name: {k: run["metrics"].get(k) for k in ("image_auroc", "pixel_auroc", "aupro")}
               for name, run in results["runs"].items()}
    _record("report", out_dir, type=detector, figures=figures,
            inputs={"train": train, "test": test,
                    "synthetic": synthetic[0] if synthetic and len(synthetic) == 1 else synthetic,
                    "real_labeled": real_labeled},
            params={"backbone": backbone, "resolution": resolution, "baselines": names, "seed": seed})


@app.command("masks")
def masks(
    out_dir: Path = typer.Option(..., "--out", help="Output folder: masks/*.png and annotations.json."),
    kind: str = typer.Option("perlin", "--kind", help="perlin or bbox."),
    n: int = typer.Option(16, "--n", min=1, help="How many masks."),
    size: str | None = typer.Option(None, "--size", help="Mask size HxW, e.g. 256x256."),
    like: Path | None = typer.Option(None, "--like", help="Take mask sizes (and foregrounds) from these images."),
    fmt: str = typer.Option("auto", "--format", help="Layout of --like/--like-labeled: auto, folder, "
                            "mvtec, pairs, voc, coco."),
    preset: str | None = typer.Option(None, "--preset", help="A preset name "
                                         "(defectgen/data/masks/: perlin, perlin-small, perlin-large, bbox, "
                                         "scratches) or a YAML path."),
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
    overwrite: Overwrite = False,
    on_bad: str = typer.Option("error", "--on-bad", help="error: stop at an unreadable --like image; skip: skip it."),
) -> None:
    """Stamp Perlin or box masks where defects should go, as 0/255 PNGs and a COCO file.

    Examples:

        defectgen masks --kind perlin --n 100 --size 256x256 --seed 0 --out masks/

        defectgen masks --kind perlin --n 100 --like good/ --preset perlin-small --out masks/

        defectgen masks --kind bbox --n 50 --like good/ --like-labeled labeled/ --out boxes/
    """
    from defectgen.masks import mask_generator
    from defectgen.masks.writer import write_mask_set

    if (size is None) == (like is None):
        raise typer.BadParameter("give exactly one of --size HxW or --like DIR")
    generator = mask_generator(kind, seed=seed, preset=preset, shape=shape, min_area=min_area, max_area=max_area,
                               threshold=threshold, like_labeled=like_labeled, fmt=fmt)
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
    against: Path | None = typer.Option(None, "--against", help="Real defects (an MVTec folder: its test split; "
                                        "or any set with masks): add KID, diversity and realism of PATH's "
                                        "generated defects against them."),
    backbone: str = typer.Option("tiny", "--backbone", help="--against: feature extractor (a transformers folder "
                                 "or hub id, e.g. ../shared/weights/mobilenet_v2_1.0_224)."),
    resolution: int = typer.Option(256, "--resolution", help="--against: side the realism score works at."),
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
    if against is not None:
        from defectgen.quality import quality_report

        summary["quality"] = quality_report(path, against, backbone=backbone, resolution=resolution)
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
    if "quality" in summary:
        q = summary["quality"]
        table.add_row("KID vs real", f"{q['kid']:.4f} +- {q['kid_std']:.4f} ({q['generated_samples']} generated, "
                      f"{q['real_defects']} real defect crops)")
        table.add_row("diversity", f"{q['diversity']:.3f} (real defects: {q['diversity_real']:.3f})")
        if "realism" in q:
            r = q["realism"]
            pixel = "-" if r.get("pixel_auroc") is None else f"{r['pixel_auroc']:.3f}"
            table.add_row("realism", f"I-AUROC {r['image_auroc']:.3f}, P-AUROC {pixel}")
        for c, v in q.get("per_class", {}).items():
            table.add_row(f"KID {c}", f"{v['kid']:.4f} +- {v['kid_std']:.4f} ({v['generated']} generated, "
                          f"{v['real']} real)")
    out.print(table)
    if summary["skipped"]:
        out.print(f"skipped {len(summary['skipped'])} unreadable file(s); first: {summary['skipped'][0]}")


@app.command("runs")
def runs(
    as_json: bool = typer.Option(False, "--json", help="Print the workspace index as JSON."),
) -> None:
    """List this folder's workspace: trained models, synthesized sets and validation reports, newest last.

    Examples:

        defectgen runs

        defectgen runs --json
    """
    from defectgen.workspace import figures_text

    ws = _workspace()
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


def _check_config(config: dict[str, dict], path: Path | None) -> dict[str, dict]:
    """defectgen.yaml's option defaults, checked against the verbs' own options: an unknown verb or key, or a value
    the option would refuse, is an error naming the file and the key. Keys may be written as on the command line
    (`out`, `mask-preset`) or as the option's name (`out_dir`)."""
    import difflib

    commands = getattr(typer.main.get_command(app), "commands", {})
    checked: dict[str, dict] = {}
    for verb, options in config.items():
        command = commands.get(verb)
        if command is None:
            close = difflib.get_close_matches(str(verb), list(commands), n=1)
            raise DefectgenError(path, f"unknown verb {verb!r}" + (f" (did you mean {close[0]}?)" if close else ""))
        by_key = {}
        for param in command.params:
            if param.param_type_name == "option" and param.name != "help":
                by_key[param.name] = param
                for flag in param.opts + param.secondary_opts:
                    by_key[flag.lstrip("-").replace("-", "_")] = param
        ctx = typer.Context(command, info_name=verb)
        checked[verb] = {}
        for key, value in options.items():
            param = by_key.get(key)
            where = f"{verb}: {key.replace('_', '-')}"
            if param is None:
                close = difflib.get_close_matches(key, list(by_key), n=1)
                raise DefectgenError(path, f"{where}: unknown option" + (
                    f" (did you mean {close[0].replace('_', '-')}?)" if close else ""))
            try:
                param.process_value(ctx, value)
            except typer.BadParameter as e:
                raise DefectgenError(path, f"{where}: invalid value {value!r} ({e.format_message()})") from None
            checked[verb][param.name] = value
    return checked


def _interrupted(message: str) -> None:
    console.print(message, highlight=False, soft_wrap=True)
    sys.exit(130)


def main() -> None:
    """Console entry point: one-line errors with exit code 2 unless --debug; Ctrl-C exits 130."""
    debug = "--debug" in sys.argv[1:]
    if not debug:  # library chatter (e.g. "requires torchvision, falling back") is not for users
        import os

        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from defectgen.workspace import config_file, load_config

        default_map = _check_config(load_config(), config_file())  # defectgen.yaml: per-verb option defaults
        code = app(standalone_mode=False, default_map=default_map)
        # typer turns Ctrl-C outside our own handlers into a returned 130 rather than an exception
        if code == 130:
            _interrupted("interrupted; files already written are complete (writes are atomic)")
        if isinstance(code, int) and code:
            sys.exit(code)
    except DefectgenError as e:
        if debug:
            raise
        if e.exit_code == 130:  # training.Interrupted: Ctrl-C, with the checkpoint saved on the way out
            _interrupted(_flags(e.message) + ("; resume with --resume" if getattr(e, "checkpoint", None) else ""))
        console.print(f"[red]error:[/red] {_flags(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        _interrupted("aborted")
    except KeyboardInterrupt:
        _interrupted("interrupted; files already written are complete (writes are atomic)")
    except Exception as e:  # usage errors (bad option values) carry their own exit code and message
        if isinstance(e, typer.TyperException) and hasattr(e, "show"):
            e.show()
            sys.exit(getattr(e, "exit_code", 2))
        if debug:
            raise
        console.print(f"[red]error:[/red] {type(e).__name__}: {e} (run with --debug for the traceback)",
                      highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
