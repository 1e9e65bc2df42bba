"""Training verbs: train-ddpm (the DDPMs) and train-ldm (the text-guided inpainting LDM)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer

from defectgen.cli.common import (
    BatchSize,
    CheckpointEvery,
    Command,
    DdpmResolution,
    Ema,
    Fmt,
    GradAccum,
    LdmResolution,
    Lr,
    MixedPrecision,
    OnBad,
    Overwrite,
    Steps,
    Tensorboard,
    TrainResume,
    TrainSeed,
    TrustCheckpoint,
    Warmup,
    app,
    console,
    out,
    output,
    record,
)

CheckpointMinutes = Annotated[float, typer.Option("--checkpoint-minutes", min=0, help="Also checkpoint once this "
                                                  "much wall time has passed since the last checkpoint (0: never).")]


def _train_config(mixed_precision: str, **fields):
    from defectgen.diffusion.training import TrainConfig

    if mixed_precision not in ("no", "fp16", "bf16"):
        raise typer.BadParameter("--mixed-precision must be no, fp16 or bf16")
    return TrainConfig(mixed_precision=mixed_precision, **fields)


def _checkpoint_every(ctx: typer.Context, value: int, steps: int) -> int:
    """--checkpoint-every as typed (or set in defectgen.yaml); left at its default it is only the cap, and a run
    checkpoints every tenth of its steps when that comes sooner."""
    from defectgen.diffusion.training import default_checkpoint_every

    source = ctx.get_parameter_source("checkpoint_every")  # click's ParameterSource (typer may carry its own click)
    if getattr(source, "name", None) == "DEFAULT":
        return default_checkpoint_every(steps, cap=value)
    return value


def _run_folder(out_dir: Path | None, stem: str, resume: bool) -> Path:
    """--out, or the workspace's next free folder, chosen by the main process alone and handed to the others when
    torchrun or accelerate launch started several (each would otherwise pick its own runs/<stem>-N)."""
    from defectgen.diffusion.training import launch_warning, main_decides

    warning = launch_warning()
    if warning:
        console.print(f"warning: {warning}", highlight=False, markup=False, soft_wrap=True)
    return main_decides(lambda: output(out_dir, "model", stem, resume))


def _is_main() -> bool:
    from defectgen.diffusion.training import process_state

    return process_state().is_main_process


@contextlib.contextmanager
def _one_voice():
    """With several processes, an error or stop every process meets alike is printed by the main process only; the
    others exit with the same code and say nothing."""
    from defectgen.diffusion.training import Interrupted
    from defectgen.errors import DefectgenError

    try:
        yield
    except DefectgenError as e:
        if getattr(e, "other_process", False) or (isinstance(e, Interrupted) and not _is_main()):
            raise SystemExit(e.exit_code) from None
        raise


@app.command("train-ddpm", cls=Command)
def train_ddpm(
    ctx: typer.Context,
    out_dir: Path | None = typer.Option(None, "--out", help="Run folder: the diffusers model, defectgen.json, "
                                        "checkpoints/ (default: runs/ddpm-N or runs/cddpm-N)."),
    normals: Path | None = typer.Option(None, "--normals", help="Normal images (a folder, or MVTec: train/good)."),
    labeled: Path | None = typer.Option(None, "--labeled", help="Labeled defects (pairs, MVTec, VOC or COCO): "
                                        "trains the class- and mask-conditional model."),
    preset: str = typer.Option("small", "--preset", help="UNet size: tiny (CPU tests), small, base (~35M)."),
    resolution: DdpmResolution = None,
    steps: Steps = 20000, batch_size: BatchSize = 16, lr: Lr = 1e-4, warmup: Warmup = 500,
    mixed_precision: MixedPrecision = "no", grad_accum: GradAccum = 1, ema: Ema = True,
    checkpoint_every: CheckpointEvery = 1000, checkpoint_minutes: CheckpointMinutes = 10.0,
    resume: TrainResume = False, trust_checkpoint: TrustCheckpoint = False,
    crop: str = typer.Option("random", "--crop", help="Larger images: random crops or resize."),
    context: float = typer.Option(1.0, "--context", min=1.0, max=8.0, help="Random crops span at least this many "
                                  "model sides of native pixels, resized to the model: more surface around each "
                                  "defect, less of its detail. Synthesis cuts the same windows."),
    class_dropout: float = typer.Option(0.1, "--class-dropout", help="Conditional: rate of the null class "
                                        "(for classifier-free guidance)."),
    target: str = typer.Option("image", "--target", help="Conditional: what the model diffuses, image (the "
                               "window) or residual (the defect over the surface filled in under the mask from "
                               "around it)."),
    tensorboard: Tensorboard = False,
    workers: int = typer.Option(0, "--workers", min=0, help="Data-loading worker processes."),
    seed: TrainSeed = 0, overwrite: Overwrite = False, on_bad: OnBad = "error",
) -> None:
    """Train a DDPM on normal images, or a class- and mask-conditional DDPM on labeled defects.

    Examples:

        defectgen train-ddpm --normals good/ --out runs/ddpm

        defectgen train-ddpm --labeled labeled/ --normals good/ --out runs/cddpm --preset base --mixed-precision bf16

        defectgen train-ddpm --normals good/ --out runs/ddpm --resume

        torchrun --nproc_per_node 2 -m defectgen.cli train-ddpm --normals good/ --out runs/ddpm
    """
    from defectgen.diffusion.options import DdpmTrainingOptions
    from defectgen.diffusion.train_ddpm import train_ddpm as train
    from defectgen.workspace import model_record

    cfg = _train_config(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup,
                        mixed_precision=mixed_precision, grad_accum=grad_accum, ema=ema,
                        checkpoint_every=_checkpoint_every(ctx, checkpoint_every, steps),
                        checkpoint_minutes=checkpoint_minutes,
                        tensorboard=tensorboard, seed=seed, num_workers=workers)
    options = DdpmTrainingOptions(preset=preset, resolution=resolution, crop=crop, context=context,
                                  target=target, class_dropout=class_dropout,
                                  config=cfg, resume=resume, overwrite=overwrite, trust_checkpoint=trust_checkpoint,
                                  on_bad=on_bad)
    with _one_voice():
        out_dir = _run_folder(out_dir, "cddpm" if labeled else "ddpm", resume)
        model = train(out_dir, normals, labeled, options, log=console.print)
    if not _is_main():
        return
    record(out_dir, model_record(
        model.kind, {"normals": normals, "labeled": labeled},
        {"preset": preset, "resolution": model.resolution, "steps": steps, "batch_size": batch_size, "seed": seed},
        final_loss=model.meta.get("result", {}).get("final_loss"), classes=model.class_names))
    out.print(f"saved {model.kind} model ({model.resolution}x{model.resolution}, {model.channels} channel(s)"
              + (f", classes: {', '.join(model.class_names)}" if model.class_names else "") + f") to {out_dir}")


@app.command("train-ldm", cls=Command)
def train_ldm(
    ctx: typer.Context,
    labeled: Path = typer.Option(..., "--labeled", help="Labeled defects with masks (pairs, MVTec labeled/, COCO, "
                                 "VOC boxes)."),
    out_dir: Path | None = typer.Option(None, "--out", help="Run folder: a diffusers inpainting pipeline + "
                                        "defectgen.json (default: runs/ldm-N)."),
    base: str = typer.Option("tiny", "--base", help="'tiny' (built from scratch, offline), or a diffusers inpainting "
                             "folder or hub id such as a Stable Diffusion inpainting model."),
    prompts: Path | None = typer.Option(None, "--prompts", help="Prompt file (e.g. "
                                        "prompts/tile.yaml): captions from the class names."),
    lora_rank: int = typer.Option(0, "--lora-rank", min=0, help="LoRA rank through peft (0: full fine-tuning)."),
    train_text_encoder: bool = typer.Option(False, "--train-text-encoder", help="Also train the text encoder "
                                            "(frozen by default)."),
    preset: str = typer.Option("tiny", "--preset", help="Size of a --base tiny model: tiny or small."),
    resolution: LdmResolution = None,
    tokenizer: Path | None = typer.Option(None, "--tokenizer", help="CLIP tokenizer folder for --base tiny, e.g. "
                                          "../shared/weights/clip-tokenizer (default: a byte-level one)."),
    vae_steps: int = typer.Option(2000, "--vae-steps", min=1, help="--base tiny: VAE training steps first."),
    steps: Steps = 5000, batch_size: BatchSize = 8, lr: Lr = 1e-4, warmup: Warmup = 100,
    mixed_precision: MixedPrecision = "no", grad_accum: GradAccum = 1, ema: Ema = True,
    checkpoint_every: CheckpointEvery = 500, checkpoint_minutes: CheckpointMinutes = 10.0,
    tensorboard: Tensorboard = False,
    fmt: Fmt = "auto",
    seed: TrainSeed = 0, resume: TrainResume = False, trust_checkpoint: TrustCheckpoint = False,
    overwrite: Overwrite = False,
) -> None:
    """Fine-tune a text-guided inpainting latent diffusion model on labeled defects with their real masks.

    Examples:

        defectgen train-ldm --labeled labeled/ --prompts prompts/tile.yaml --out runs/ldm

        defectgen train-ldm --labeled labeled/ --base path/to/sd-inpainting --lora-rank 8 --out runs/ldm-lora
    """
    from defectgen.diffusion.options import LdmTrainingOptions
    from defectgen.diffusion.train_ldm import train_ldm as train
    from defectgen.workspace import model_record

    cfg = _train_config(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup,
                        mixed_precision=mixed_precision, grad_accum=grad_accum, ema=ema,
                        checkpoint_every=_checkpoint_every(ctx, checkpoint_every, steps),
                        checkpoint_minutes=checkpoint_minutes,
                        tensorboard=tensorboard, seed=seed)
    options = LdmTrainingOptions(base=base, preset=preset, prompts=prompts, lora_rank=lora_rank,
                                 resolution=resolution, tokenizer=tokenizer, vae_steps=vae_steps,
                                 train_text_encoder=train_text_encoder, fmt=fmt, config=cfg, resume=resume,
                                 overwrite=overwrite, trust_checkpoint=trust_checkpoint)
    with _one_voice():
        out_dir = _run_folder(out_dir, "ldm", resume)
        meta = train(labeled, out_dir, options, log=console.print)
    if not _is_main():
        return
    record(out_dir, model_record(
        "ldm", {"labeled": labeled, "base": base, "prompts": prompts},
        {"preset": preset, "resolution": meta["resolution"], "steps": steps, "lora_rank": lora_rank, "seed": seed},
        final_loss=meta.get("final_loss"), classes=meta["classes"]))
    out.print(f"saved inpainting LDM ({meta['resolution']}x{meta['resolution']}, classes: "
              f"{', '.join(meta['classes'])}, final loss {meta.get('final_loss') or float('nan'):.4f}) to {out_dir}")
