"""The text-guided inpainting LDM's pipeline: a diffusers `StableDiffusionInpaintPipeline` (a 9-channel UNet on
noisy latents, mask and masked-image latents; a VAE; a CLIP text encoder).

`build_tiny_pipeline` assembles one from scratch out of models.py's builders (its VAE still needs training, see
train_ldm.py), `load_inpaint_pipeline` opens any inpainting folder or hub id, `save_ldm` writes a run folder: the
pipeline, then `defectgen.json` (folder.py) beside it. `StableDiffusionInpaintPipeline.from_pretrained` opens it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from defectgen.diffusion.folder import write_metadata
from defectgen.diffusion.models import build_ldm_unet, build_text_encoder, build_vae, ldm_preset, ldm_scheduler
from defectgen.errors import DefectgenError


def build_tiny_pipeline(resolution: int, tokenizer, preset: str = "tiny", seed: int = 0):
    """A from-scratch inpainting LDM; the VAE still needs training (`train_ldm`) before it is useful."""
    from diffusers import StableDiffusionInpaintPipeline

    p = ldm_preset(preset, resolution)
    torch.manual_seed(seed)
    vae = build_vae(p, resolution)
    unet = build_ldm_unet(p, resolution)
    text_encoder = build_text_encoder(p, tokenizer)
    return StableDiffusionInpaintPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=ldm_scheduler(),
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


def save_ldm(pipe, out_dir: Path, meta: dict[str, Any]) -> None:
    """Write the pipeline folder, then defectgen.json beside it (model files first: a folder with metadata is
    complete)."""
    from transformers.utils import logging as transformers_logging

    from defectgen import __version__

    transformers_logging.disable_progress_bar()
    pipe.save_pretrained(str(out_dir), safe_serialization=True)
    write_metadata(out_dir, {"kind": "ldm", "version": __version__, **meta})
