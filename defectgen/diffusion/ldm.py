"""Text-guided inpainting latent diffusion (method 3 of DESIGN.md): a diffusers `StableDiffusionInpaintPipeline`.

The base is any diffusers inpainting folder or hub id (a 9-channel UNet: noisy latents, mask, masked-image
latents), or `tiny`: a small model built here from scratch (AutoencoderKL trained first on the data's own images,
UNet2DConditionModel, CLIPTextModel) so the whole path runs offline and in tests. Fine-tuning uses the labeled
set's real masks and captions from the prompt library, fully or with LoRA (peft), through the same accelerate loop
as the DDPMs. The saved model is a pipeline folder that `StableDiffusionInpaintPipeline.from_pretrained` opens,
plus `defectgen.json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from defectgen.diffusion.folder import update_metadata, write_metadata
from defectgen.errors import DefectgenError
from defectgen.io.images import to_float
from defectgen.io.resolution import square_side
from defectgen.prompts import Material

LDM_PRESETS: dict[str, dict[str, Any]] = {
    # vae_blocks sets the latent downsampling (2 ** (len - 1)); the UNet runs on latents.
    "tiny": {"vae_blocks": (32, 64), "unet_blocks": (32, 64), "text_width": 32, "text_layers": 2, "heads": 4},
    "small": {"vae_blocks": (64, 128, 128), "unet_blocks": (64, 128, 256), "text_width": 256, "text_layers": 4,
              "heads": 8},
}


# ---- tokenizer -----------------------------------------------------------------------------------------------

def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins for bytes that byte-level BPE (GPT-2, CLIP) uses."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def byte_level_clip_tokenizer(folder: str | Path):
    """Write and load a minimal CLIP BPE tokenizer (bytes only, no merges): any text tokenizes, no download needed.
    Real runs should pass a real CLIP tokenizer folder (e.g. ../shared/weights/clip-tokenizer)."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = _byte_alphabet()
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(alphabet)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="<|endoftext|>",
                         model_max_length=77)


def load_tokenizer(path: str | Path | None, scratch: Path):
    from transformers import CLIPTokenizer

    if path is None:
        return byte_level_clip_tokenizer(scratch)
    try:
        return CLIPTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise DefectgenError(path, f"not a CLIP tokenizer folder or id ({str(e).splitlines()[0]})") from None


# ---- building and loading ------------------------------------------------------------------------------------

def build_tiny_pipeline(resolution: int, tokenizer, preset: str = "tiny", seed: int = 0):
    """A from-scratch inpainting LDM; the VAE still needs training (`train_vae`) before it is useful."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if preset not in LDM_PRESETS:
        raise DefectgenError(None, f"unknown LDM preset {preset!r}; choose from {', '.join(LDM_PRESETS)}")
    p = LDM_PRESETS[preset]
    factor = 2 ** (len(p["vae_blocks"]) - 1)
    if resolution % (8 * factor // 2 if factor > 1 else 8) or resolution % 8:
        raise DefectgenError(None, f"resolution {resolution} must be a multiple of 8 and of the latent factor {factor}")
    torch.manual_seed(seed)
    groups = min(32, p["vae_blocks"][0])
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=groups,
        block_out_channels=p["vae_blocks"], sample_size=resolution,
        down_block_types=("DownEncoderBlock2D",) * len(p["vae_blocks"]),
        up_block_types=("UpDecoderBlock2D",) * len(p["vae_blocks"]),
    )
    n = len(p["unet_blocks"])
    unet = UNet2DConditionModel(
        sample_size=resolution // factor, in_channels=9, out_channels=4, layers_per_block=1,
        block_out_channels=p["unet_blocks"], norm_num_groups=min(32, p["unet_blocks"][0]),
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        cross_attention_dim=p["text_width"], attention_head_dim=p["heads"],
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=p["text_width"], intermediate_size=p["text_width"] * 4,
        num_hidden_layers=p["text_layers"], num_attention_heads=p["heads"], max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012, clip_sample=False, steps_offset=1)
    return StableDiffusionInpaintPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def load_inpaint_pipeline(model: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """Any diffusers inpainting pipeline (folder or hub id). Local folders never touch the network."""
    from diffusers import StableDiffusionInpaintPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()  # loading bars are noise next to the synthesis bar
    transformers_logging.disable_progress_bar()
    path = Path(model)
    local = path.exists()
    if local and not (path / "model_index.json").is_file():
        raise DefectgenError(path, "not a diffusers pipeline folder (no model_index.json)")
    try:
        pipe = StableDiffusionInpaintPipeline.from_pretrained(
            str(model), safety_checker=None, requires_safety_checker=False, local_files_only=local,
            dtype=dtype or torch.float32,
        )
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise DefectgenError(model, f"cannot load an inpainting pipeline ({str(e).splitlines()[0][:200]})") from None
    if pipe.unet.config.in_channels != 9:
        raise DefectgenError(model, f"not an inpainting model: its UNet takes {pipe.unet.config.in_channels} "
                             "channels, an inpainting UNet takes 9 (latents, mask, masked-image latents)")
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


# ---- training data -------------------------------------------------------------------------------------------

@dataclass
class LabeledDefect:
    image: np.ndarray  # H x W x C uint8/uint16
    mask: np.ndarray   # H x W bool
    caption: str


class InpaintCaptionExamples:
    """Labeled defects as (pixels, mask, caption ids) at `resolution`: a square window around the real mask,
    resized, so small defects are seen large enough. Captions drop to "" at `caption_dropout` for guidance."""

    def __init__(self, items: list[LabeledDefect], tokenizer, resolution: int, caption_dropout: float = 0.1):
        from defectgen.io.images import mask_window

        self._window = mask_window
        self.items = items
        self.resolution = resolution
        self.caption_dropout = caption_dropout
        captions = sorted({it.caption for it in items} | {""})
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        self.ids = dict(zip(captions, ids, strict=True))

    def __len__(self) -> int:
        return len(self.items)

    def example(self, index: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        from defectgen.diffusion.training import to_tensor
        from defectgen.io.images import match_channels

        it = self.items[index]
        h, w = it.mask.shape
        y0, x0, wh, ww = self._window(h, w, it.mask, self.resolution, rng)
        image = match_channels(to_float(it.image[y0:y0 + wh, x0:x0 + ww]), 3)
        mask = it.mask[y0:y0 + wh, x0:x0 + ww].astype(np.float32)
        r = self.resolution
        image = cv2.resize(image, (r, r), interpolation=cv2.INTER_AREA if wh > r else cv2.INTER_LINEAR)
        image = image.reshape(r, r, -1)
        mask = cv2.resize(mask, (r, r), interpolation=cv2.INTER_NEAREST)
        if rng.random() < 0.5:  # defects have no handedness
            image, mask = image[:, ::-1], mask[:, ::-1]
        caption = "" if rng.random() < self.caption_dropout else it.caption
        return {"pixels": to_tensor(np.ascontiguousarray(image)),
                "mask": torch.from_numpy(np.ascontiguousarray(mask))[None].float(),
                "input_ids": self.ids[caption]}


# ---- the trainable module and its losses ---------------------------------------------------------------------

class InpaintTrainer(nn.Module):
    """The UNet (trained, fully or through LoRA) with the VAE and text encoder frozen beside it."""

    def __init__(self, unet, vae, text_encoder, train_text_encoder: bool = False):
        super().__init__()
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.vae.requires_grad_(False)
        self.text_encoder.requires_grad_(train_text_encoder)


def inpaint_loss(scheduler):
    """Noise-prediction loss of a 9-channel inpainting UNet on (latents + noise, mask, masked-image latents)."""

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None):
        m = model.module if hasattr(model, "module") else model
        pixels, mask = batch["pixels"], batch["mask"]
        sf = m.vae.config.scaling_factor
        with torch.no_grad():
            latents = m.vae.encode(pixels).latent_dist.sample() * sf
            # As StableDiffusionInpaintPipeline does: the masked image keeps the outside, zero (mid-gray) inside.
            masked = m.vae.encode(pixels * (mask < 0.5)).latent_dist.mode() * sf
        text = m.text_encoder(batch["input_ids"])[0]
        small_mask = F.interpolate(mask, size=latents.shape[-2:], mode="nearest")
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device)
        noisy = scheduler.add_noise(latents, noise, t)
        pred = m.unet(torch.cat([noisy, small_mask, masked], dim=1), t, encoder_hidden_states=text).sample
        target = scheduler.get_velocity(latents, noise, t) if scheduler.config.prediction_type == "v_prediction" \
            else noise
        return F.mse_loss(pred.float(), target.float())

    return loss_fn


def vae_loss(kl_weight: float = 1e-6):
    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None):
        vae = model.module if hasattr(model, "module") else model
        posterior = vae.encode(batch["pixels"]).latent_dist
        recon = vae.decode(posterior.sample()).sample
        return F.l1_loss(recon, batch["pixels"]) + F.mse_loss(recon, batch["pixels"]) \
            + kl_weight * posterior.kl().mean()

    return loss_fn


@torch.no_grad()
def calibrate_latent_scale(vae, examples: InpaintCaptionExamples, n: int = 32, seed: int = 0) -> float:
    """1 / std of the latents, as Stable Diffusion's 0.18215 is for its VAE: the UNet then sees unit variance."""
    rng = np.random.default_rng(seed)
    pixels = torch.stack([examples.example(i % len(examples), rng)["pixels"] for i in range(min(n, 4 * len(examples)))])
    latents = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.sample()
    return float(1.0 / latents.float().std().clamp_min(1e-6))


# ---- fine-tuning entry point ---------------------------------------------------------------------------------

def add_lora(unet, rank: int):
    from peft import LoraConfig

    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))


def merge_lora(unet) -> None:
    """Fold LoRA weights into the base layers and drop the adapters, so the folder is a plain diffusers UNet."""
    unet.fuse_lora()
    unet.unload_lora()


def captions_for(class_names: list[str], material: Material | None, seed: int = 0) -> dict[str, str]:
    rng = np.random.default_rng(seed)
    if material is None:
        return {c: f"a photo of a surface with {c.replace('_', ' ')} defect" for c in class_names}
    return {c: material.caption(c, rng) for c in class_names}


def save_ldm(pipe, out_dir: Path, meta: dict[str, Any]) -> None:
    """Write the pipeline folder, then defectgen.json beside it (model files first: a folder with metadata is
    complete)."""
    from transformers.utils import logging as transformers_logging

    from defectgen import __version__

    transformers_logging.disable_progress_bar()
    pipe.save_pretrained(str(out_dir), safe_serialization=True)
    write_metadata(out_dir, {"kind": "ldm", "version": __version__, **meta})


def _labeled_defects(labeled: str | Path, fmt: str, captions_of) -> tuple[list[LabeledDefect], list[str]]:
    from defectgen.io.datasets import open_dataset

    dataset = open_dataset(labeled, fmt).select(normal=False)
    if len(dataset) == 0:
        raise DefectgenError(labeled, "no labeled defects (images with masks or boxes) to fine-tune on")
    classes = dataset.classes or ["defect"]
    captions = captions_of(classes)
    items = []
    for s in dataset:
        mask = s.defect_mask()
        if not mask.any():
            raise DefectgenError(s.mask_path or s.path, "empty defect mask")
        items.append(LabeledDefect(s.image, mask, captions[s.class_name or "defect"]))
    return items, classes


def train_ldm(
    labeled: str | Path, out_dir: str | Path, cfg, *, base: str = "tiny", preset: str = "tiny",
    prompts: str | Path | None = None, lora_rank: int = 0, resolution: int | str | None = None,
    tokenizer: str | Path | None = None, vae_steps: int = 2000, train_text_encoder: bool = False,
    fmt: str = "auto", resume: bool = False, trust_checkpoint: bool = False, overwrite: bool = False, log=print,
) -> dict[str, Any]:
    """Fine-tune an inpainting LDM on labeled defects with their real masks; returns the metadata written.
    resolution: the side of the square windows cut at native scale around the masks, `N` or `NxN` (a multiple
    of 8; a non-square HxW is refused); None: 64 for `tiny`, else the base model's own. `trust_checkpoint` lets
    `resume` load checkpoints that hold pickle files (saved by older defectgen versions)."""
    resolution = square_side(resolution, 8, "the inpainting LDM")
    from defectgen.diffusion.training import checkpoints, main_decides, process_state, train_loop
    from defectgen.io.output import OutputFolder
    from defectgen.prompts import load_material

    material = load_material(prompts) if prompts else None
    items, classes = _labeled_defects(labeled, fmt, lambda names: captions_for(names, material, cfg.seed))
    folder = OutputFolder(out_dir, overwrite=overwrite, resume=resume, verb="train-ldm",
                          protect=[labeled, base, prompts, tokenizer],
                          worth_keeping=lambda d: bool(checkpoints(d)) or (d / "_vae_stage" / "vae").is_dir())
    is_main = process_state().is_main_process  # several processes (torchrun): the main one alone writes files
    out_dir = main_decides(folder.prepare)
    if not is_main:
        log = lambda message: None  # noqa: E731
    try:
        if base == "tiny":
            resolution = resolution or 64
            pipe = _tiny_pipeline(items, out_dir, cfg, resolution, preset, tokenizer, vae_steps, resume, log)
        else:
            pipe = load_inpaint_pipeline(base)
            resolution = resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
        if resolution % 8:
            raise DefectgenError(None, f"resolution {resolution} must be a multiple of 8")

        if lora_rank > 0:
            add_lora(pipe.unet, lora_rank)
        module = InpaintTrainer(pipe.unet, pipe.vae, pipe.text_encoder, train_text_encoder)
        examples = InpaintCaptionExamples(items, pipe.tokenizer, resolution)
        log(f"{'stage 2/2: ' if base == 'tiny' else ''}fine-tuning the inpainting UNet"
            f"{f' with LoRA rank {lora_rank}' if lora_rank else ''} on {len(items)} labeled defects, {cfg.steps} steps")
        meta: dict[str, Any] = {
            "classes": classes, "captions": captions_for(classes, material, cfg.seed),
            "prompts": str(prompts) if prompts else None, "material": material.name if material else None,
            "negative_prompt": material.negative if material else "", "normal_prompt": material.normal if material
            else "a photo of a normal surface", "resolution": resolution, "base": str(base), "preset": preset,
            "lora_rank": lora_rank, "steps": cfg.steps, "labeled": str(labeled), "examples": len(items),
        }
        result = train_loop(module, inpaint_loss(pipe.scheduler), examples, out_dir, cfg,
                            _pipeline_saver(pipe, meta, lora_rank), resume=resume, log=log,
                            trust_checkpoint=trust_checkpoint)
    except BaseException:
        if is_main:
            folder.abandon()  # interrupted before anything resumable was saved: no empty run folder stays behind
        raise
    import shutil

    meta.update({"final_loss": result.loss, "images_per_second": result.images_per_second})
    if is_main:
        shutil.rmtree(out_dir / "_vae_stage", ignore_errors=True)
        shutil.rmtree(out_dir / "_tokenizer", ignore_errors=True)
        update_metadata(out_dir, meta)
    return meta


def _tiny_pipeline(items: list[LabeledDefect], out_dir: Path, cfg, resolution: int, preset: str,
                   tokenizer: str | Path | None, vae_steps: int, resume: bool, log):
    """A from-scratch pipeline whose VAE is trained (stage 1) on the labeled images, or taken from the VAE stage
    of the run being resumed; its latent scale is calibrated on the same images."""
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        tok = load_tokenizer(tokenizer, Path(scratch))
        pipe = build_tiny_pipeline(resolution, tok, preset, cfg.seed)
        if tokenizer is None:  # keep the generated tokenizer's files inside the saved pipeline
            from defectgen.diffusion.training import process_state

            state = process_state()
            if state.is_main_process:
                pipe.tokenizer.save_pretrained(str(out_dir / "_tokenizer"))
            state.wait_for_everyone()
            pipe.tokenizer = type(pipe.tokenizer).from_pretrained(str(out_dir / "_tokenizer"))
    stage = out_dir / "_vae_stage"
    examples = InpaintCaptionExamples(items, pipe.tokenizer, resolution, caption_dropout=0.0)
    if resume and (stage / "vae" / "config.json").is_file():
        from diffusers import AutoencoderKL

        pipe.vae = AutoencoderKL.from_pretrained(str(stage / "vae"), use_safetensors=True)  # never unpickle
        log(f"resumed: VAE taken from {stage / 'vae'}")
    else:
        _train_vae(pipe.vae, examples, stage, cfg, vae_steps, log)
    pipe.vae.register_to_config(scaling_factor=calibrate_latent_scale(pipe.vae, examples, seed=cfg.seed))
    return pipe


def _train_vae(vae, examples: InpaintCaptionExamples, stage: Path, cfg, vae_steps: int, log) -> None:
    """Stage 1: the VAE alone (no EMA, constant LR, no checkpoints but the final one in `stage`/vae)."""
    from defectgen.diffusion.training import TrainConfig, train_loop

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
            import copy

            unet = copy.deepcopy(unet)
            merge_lora(unet)
        pipe.unet, pipe.text_encoder = unet, trained.text_encoder
        save_ldm(pipe, folder, meta)

    return save_fn
