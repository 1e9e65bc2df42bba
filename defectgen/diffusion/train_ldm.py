"""`train_ldm`: fine-tune a text-guided inpainting latent diffusion model on labeled defects with their real masks.

The base is any diffusers inpainting folder or hub id (a 9-channel UNet: noisy latents, mask, masked-image
latents), or `tiny`: a small model built from scratch (pipelines/pipeline_ldm_inpaint.py) whose VAE is trained
first on the data's own images, so the whole path runs offline and in tests. `BASES` says how each kind of base
starts. Fine-tuning uses the labeled set's real masks and captions from the prompt library (data.py), fully or
with LoRA (peft), through the same accelerate loop as the DDPMs (training.py) with losses.py's `inpaint_loss`.
Like train_ddpm.py, this module only composes those parts. The saved model is a pipeline folder that
`StableDiffusionInpaintPipeline.from_pretrained` opens, plus `defectgen.json`.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from defectgen.diffusion.data import InpaintCaptionExamples, LabeledDefect, captions_for, read_labeled_defects
from defectgen.diffusion.folder import update_metadata
from defectgen.diffusion.losses import inpaint_loss, vae_loss
from defectgen.diffusion.models import load_tokenizer
from defectgen.diffusion.options import LdmTrainingOptions
from defectgen.diffusion.pipelines.pipeline_ldm_inpaint import build_tiny_pipeline, load_inpaint_pipeline, save_ldm
from defectgen.diffusion.training import TrainConfig, TrainResult, checkpoints, main_decides, process_state, train_loop
from defectgen.errors import DefectgenError
from defectgen.io.output import OutputFolder
from defectgen.io.resolution import square_side
from defectgen.prompts import load_material


class InpaintTrainer(nn.Module):
    """The UNet (trained, fully or through LoRA) with the VAE and text encoder frozen beside it."""

    def __init__(self, unet, vae, text_encoder, train_text_encoder: bool = False):
        super().__init__()
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.vae.requires_grad_(False)
        self.text_encoder.requires_grad_(train_text_encoder)


@torch.no_grad()
def calibrate_latent_scale(vae, examples: InpaintCaptionExamples, n: int = 32, seed: int = 0) -> float:
    """1 / std of the latents, as Stable Diffusion's 0.18215 is for its VAE: the UNet then sees unit variance."""
    rng = np.random.default_rng(seed)
    pixels = torch.stack([examples.example(i % len(examples), rng)["pixels"] for i in range(min(n, 4 * len(examples)))])
    latents = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.sample()
    return float(1.0 / latents.float().std().clamp_min(1e-6))


def add_lora(unet, rank: int):
    from peft import LoraConfig

    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))


def merge_lora(unet) -> None:
    """Fold LoRA weights into the base layers and drop the adapters, so the folder is a plain diffusers UNet."""
    unet.fuse_lora()
    unet.unload_lora()


@dataclass
class _LdmRun:
    """One `train_ldm` call, as its stages need it."""

    items: list[LabeledDefect]
    out_dir: Path
    cfg: TrainConfig
    base: str | Path
    preset: str
    tokenizer: str | Path | None
    vae_steps: int
    lora_rank: int
    train_text_encoder: bool
    resume: bool
    trust_checkpoint: bool
    log: Callable[[str], None]


def train_ldm(labeled: str | Path, out_dir: str | Path, options: LdmTrainingOptions | None = None, *, log=print,
              **overrides: Any) -> dict[str, Any]:
    """Fine-tune an inpainting LDM on labeled defects with their real masks, with `options` (options.py;
    `overrides` replace single fields of it: `vae_steps=3`); returns the metadata written."""
    o = replace(options or LdmTrainingOptions(), **overrides)
    cfg, base, prompts, tokenizer = o.config, o.base, o.prompts, o.tokenizer
    resolution = square_side(o.resolution, 8, "the inpainting LDM")
    material = load_material(prompts) if prompts else None
    items, classes = read_labeled_defects(labeled, o.fmt, lambda names: captions_for(names, material, cfg.seed))
    folder = OutputFolder(out_dir, overwrite=o.overwrite, resume=o.resume, verb="train-ldm",
                          protect=[labeled, base, prompts, tokenizer],
                          worth_keeping=lambda d: bool(checkpoints(d)) or (d / "_vae_stage" / "vae").is_dir())
    is_main = process_state().is_main_process  # several processes (torchrun): the main one alone writes files
    out_dir = main_decides(folder.prepare)
    if not is_main:
        log = lambda message: None  # noqa: E731
    run = _LdmRun(items, out_dir, cfg, base, o.preset, tokenizer, o.vae_steps, o.lora_rank, o.train_text_encoder,
                  o.resume, o.trust_checkpoint, log)
    try:
        pipe, resolution, stage = BASES.get(base, _pretrained_base)(run, resolution)
        if resolution % 8:
            raise DefectgenError(None, f"resolution {resolution} must be a multiple of 8")
        meta: dict[str, Any] = {
            "classes": classes, "captions": captions_for(classes, material, cfg.seed),
            "prompts": str(prompts) if prompts else None, "material": material.name if material else None,
            "negative_prompt": material.negative if material else "", "normal_prompt": material.normal if material
            else "a photo of a normal surface", "resolution": resolution, "base": str(base), "preset": o.preset,
            "lora_rank": o.lora_rank, "steps": cfg.steps, "labeled": str(labeled), "examples": len(items),
        }
        result = _fine_tune(run, pipe, resolution, stage, meta)
    except BaseException:
        if is_main:
            folder.abandon()  # interrupted before anything resumable was saved: no empty run folder stays behind
        raise
    meta.update({"final_loss": result.loss, "images_per_second": result.images_per_second})
    if is_main:
        shutil.rmtree(out_dir / "_vae_stage", ignore_errors=True)
        shutil.rmtree(out_dir / "_tokenizer", ignore_errors=True)
        update_metadata(out_dir, meta)
    return meta


def _scratch_base(run: _LdmRun, resolution: int | None) -> tuple[Any, int, str]:
    """`tiny`: a pipeline built here (64 px unless asked), its VAE trained first: fine-tuning is stage 2 of 2."""
    resolution = resolution or 64
    return _tiny_pipeline(run, resolution), resolution, "stage 2/2: "


def _pretrained_base(run: _LdmRun, resolution: int | None) -> tuple[Any, int, str]:
    """Any other base: a diffusers inpainting folder or hub id, at its own resolution unless asked."""
    pipe = load_inpaint_pipeline(run.base)
    return pipe, resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor, ""


# How each base starts: (pipeline, resolution, the prefix of the fine-tuning log line). Any base not named here is
# a diffusers inpainting pipeline to load.
BASES: dict[str, Callable[[_LdmRun, int | None], tuple[Any, int, str]]] = {"tiny": _scratch_base}


def _fine_tune(run: _LdmRun, pipe, resolution: int, stage: str, meta: dict[str, Any]) -> TrainResult:
    """The inpainting UNet trained (LoRA adapters added first when `lora_rank` > 0) and saved with `meta`."""
    if run.lora_rank > 0:
        add_lora(pipe.unet, run.lora_rank)
    module = InpaintTrainer(pipe.unet, pipe.vae, pipe.text_encoder, run.train_text_encoder)
    examples = InpaintCaptionExamples(run.items, pipe.tokenizer, resolution)
    run.log(f"{stage}fine-tuning the inpainting UNet{f' with LoRA rank {run.lora_rank}' if run.lora_rank else ''} "
            f"on {len(run.items)} labeled defects, {run.cfg.steps} steps")
    return train_loop(module, inpaint_loss(pipe.scheduler), examples, run.out_dir, run.cfg,
                      _pipeline_saver(pipe, meta, run.lora_rank), resume=run.resume, log=run.log,
                      trust_checkpoint=run.trust_checkpoint)


def _tiny_pipeline(run: _LdmRun, resolution: int):
    """A from-scratch pipeline whose VAE is trained (stage 1) on the labeled images, or taken from the VAE stage
    of the run being resumed; its latent scale is calibrated on the same images."""
    with tempfile.TemporaryDirectory() as scratch:
        tok = load_tokenizer(run.tokenizer, Path(scratch))
        pipe = build_tiny_pipeline(resolution, tok, run.preset, run.cfg.seed)
        if run.tokenizer is None:  # keep the generated tokenizer's files inside the saved pipeline
            state = process_state()
            if state.is_main_process:
                pipe.tokenizer.save_pretrained(str(run.out_dir / "_tokenizer"))
            state.wait_for_everyone()
            pipe.tokenizer = type(pipe.tokenizer).from_pretrained(str(run.out_dir / "_tokenizer"))
    stage = run.out_dir / "_vae_stage"
    examples = InpaintCaptionExamples(run.items, pipe.tokenizer, resolution, caption_dropout=0.0)
    if run.resume and (stage / "vae" / "config.json").is_file():
        from diffusers import AutoencoderKL

        pipe.vae = AutoencoderKL.from_pretrained(str(stage / "vae"), use_safetensors=True)  # never unpickle
        run.log(f"resumed: VAE taken from {stage / 'vae'}")
    else:
        _train_vae(pipe.vae, examples, stage, run.cfg, run.vae_steps, run.log)
    pipe.vae.register_to_config(scaling_factor=calibrate_latent_scale(pipe.vae, examples, seed=run.cfg.seed))
    return pipe


def _train_vae(vae, examples: InpaintCaptionExamples, stage: Path, cfg, vae_steps: int, log) -> None:
    """Stage 1: the VAE alone (no EMA, constant LR, no checkpoints but the final one in `stage`/vae)."""
    log(f"stage 1/2: training the VAE on {len(examples)} images for {vae_steps} steps")
    vae_cfg = TrainConfig(**{**cfg.__dict__, "steps": vae_steps, "ema": False, "warmup_steps": 0,
                             "lr": max(cfg.lr, 1e-4) * 4, "lr_schedule": "constant",
                             "checkpoint_every": 0, "checkpoint_minutes": 0, "tensorboard": False,
                             "save_on_interrupt": False})
    train_loop(vae, vae_loss(), examples, stage, vae_cfg,
               save_fn=lambda module, folder: module.save_pretrained(str(folder / "vae")), resume=False, log=log)


def _pipeline_saver(pipe, meta: dict[str, Any], lora_rank: int):
    """The loop's `save_fn`: the trained UNet (LoRA merged) and text encoder into `pipe`, saved with `meta`."""

    def save_fn(trained: nn.Module, folder: Path) -> None:
        unet = trained.unet
        if lora_rank > 0:  # merge into a copy: the loop still holds (and restores) the adapter parameters
            unet = copy.deepcopy(unet)
            merge_lora(unet)
        pipe.unet, pipe.text_encoder = unet, trained.text_encoder
        save_ldm(pipe, folder, meta)

    return save_fn
