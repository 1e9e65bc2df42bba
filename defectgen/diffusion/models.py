"""The networks, their presets and the noise schedules they train with, as diffusers keeps its models apart from
pipelines and training. Nothing here reads data or writes folders.

DDPM (ddpm.py holds the two kinds built from these):
  `PRESETS`, `preset_config`, `unet_config`, `build_unet`: the UNet2DModel of both kinds; `ddpm_scheduler`.
  `ConditionEmbedding`: class (plus a null class for classifier-free guidance) and optional box geometry -> one
  vector the conditional UNet adds to its timestep embedding; `box_geometry` computes that box from a mask.
  `ConditionalDenoiser`: UNet + condition embedding as one module, input concat(x_t, mask, known).
  `TARGETS`, `denoising_target`, `from_target`, `local_background`: what the conditional model diffuses, the
  window itself (`image`, known = x0 * (1 - mask)) or the defect as a residual over the surface filled in from
  around the mask (`residual`, known = that filled-in background).
LDM (pipelines/pipeline_ldm_inpaint.py assembles them into a StableDiffusionInpaintPipeline):
  `LDM_PRESETS`, `ldm_preset`, `build_vae`, `build_ldm_unet`, `build_text_encoder`, `ldm_scheduler`, and the
  byte-level CLIP tokenizer that lets a from-scratch model run offline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from defectgen.errors import DefectgenError
from defectgen.io.sample import Box

TRAIN_TIMESTEPS = 1000

# UNet sizes. `base` is about 35M parameters (a GPU model at 64-256 px); `tiny` trains on a CPU in seconds.
PRESETS: dict[str, dict[str, Any]] = {
    # Attention only at the lowest level: at 64 px, attention over 32x32 tokens made `tiny` 3x slower on a CPU.
    "tiny": dict(
        block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=8, attention_head_dim=8,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    ),
    "small": dict(
        block_out_channels=(64, 128, 128, 256), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    ),
    "base": dict(
        block_out_channels=(128, 256, 256, 256), layers_per_block=2,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    ),
}


def preset_config(preset: str) -> dict[str, Any]:
    if preset not in PRESETS:
        raise DefectgenError(None, f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    return dict(PRESETS[preset])


def min_resolution_multiple(preset: str) -> int:
    """The UNet halves the image once per level but the last, so the side must be a multiple of this."""
    return 2 ** (len(PRESETS[preset]["block_out_channels"]) - 1)


def unet_config(preset: str, resolution: int, **overrides: Any) -> dict[str, Any]:
    """The preset's UNet2DModel fields with `overrides` replacing some (block_out_channels, ...), checked against
    `resolution` (a multiple of 2 ** (levels - 1))."""
    cfg = {**preset_config(preset), **overrides}
    multiple = 2 ** (len(cfg["block_out_channels"]) - 1)
    if resolution % multiple or resolution < multiple:
        raise DefectgenError(None, f"resolution {resolution} must be a multiple of {multiple} for preset {preset!r}")
    return cfg


def time_embedding_width(cfg: dict[str, Any]) -> int:
    """UNet2DModel's timestep-embedding width, which a class embedding added to it must match."""
    return cfg["block_out_channels"][0] * 4


def build_unet(resolution: int, in_channels: int, out_channels: int, cfg: dict[str, Any]) -> UNet2DModel:
    return UNet2DModel(sample_size=resolution, in_channels=in_channels, out_channels=out_channels, **cfg)


def ddpm_scheduler() -> DDPMScheduler:
    """The DDPMs' training noise schedule (the samplers run on it, see samplers.py)."""
    return DDPMScheduler(num_train_timesteps=TRAIN_TIMESTEPS, beta_schedule="linear")


class ConditionEmbedding(ModelMixin, ConfigMixin):
    """Class (with a null class at index `num_classes`) and optional box geometry -> one vector that the
    UNet adds to its timestep embedding."""

    # Saved folders name this class ["defectgen.diffusion.ddpm", "ConditionEmbedding"] in model_index.json (it was
    # defined there first); diffusers writes and resolves the name through this attribute, so it stays. ddpm.py
    # keeps the names diffusers looks up in that module.
    __module__ = "defectgen.diffusion.ddpm"

    @register_to_config
    def __init__(self, num_classes: int, embed_dim: int, box_geometry: bool = True, target: str = "image"):
        super().__init__()
        if target not in TARGETS:
            raise DefectgenError(None, f"unknown target {target!r}; choose from {', '.join(TARGETS)}")
        self.class_embedding = nn.Embedding(num_classes + 1, embed_dim)
        # Box geometry (x0, y0, x1, y1 in [0, 1] of the model's window) through a small MLP.
        self.box_embedding = nn.Sequential(nn.Linear(4, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim)) \
            if box_geometry else None

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    @property
    def residual(self) -> bool:
        """The model diffuses the defect as a residual over its local background (folders saved before the option
        read as `image`)."""
        return self.config.get("target", "image") == "residual"

    def forward(self, class_labels: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.class_embedding(class_labels)
        if self.box_embedding is not None and boxes is not None:
            emb = emb + self.box_embedding(boxes.to(emb.dtype))
        return emb


def box_geometry(mask: np.ndarray) -> np.ndarray:
    """The mask's extent as (x0, y0, x1, y1) fractions of the window: the box geometry the model is given."""
    box = Box.from_mask(mask)
    h, w = mask.shape[:2]
    if box is None:
        return np.zeros(4, np.float32)
    return np.array([box.x0 / w, box.y0 / h, box.x1 / w, box.y1 / h], np.float32)


# What the conditional model diffuses. image: the window itself; the UNet is told the outside (x0 * (1 - mask)).
# residual: x0 minus its local background, the surface filled in under the mask from the pixels around it; the UNet
# is told that background everywhere. The residual is zero outside the mask and, inside, holds only what the defect
# changes: the model spends none of its capacity on the surface's brightness and shading.
TARGETS = ("image", "residual")


def local_background(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """B x C x H x W: `image` outside the mask, and inside it the surface filled in from the unmasked pixels
    around it (push-pull: averages of the known pixels over ever coarser grids, blended back up by how much of
    each cell was known). A window with no known pixel fills with 0 (mid-gray)."""
    known = 1 - mask
    levels = [(image * known, known)]
    while min(levels[-1][1].shape[-2:]) > 1 and not bool((levels[-1][1] > 0).all()):
        x, w = levels[-1]
        levels.append((F.avg_pool2d(x, 2, ceil_mode=True), F.avg_pool2d(w, 2, ceil_mode=True)))
    x, w = levels[-1]
    fill = torch.where(w > 0, x / w.clamp_min(1e-12), torch.zeros_like(x))
    for x, w in reversed(levels[:-1]):
        up = F.interpolate(fill, size=x.shape[-2:], mode="bilinear", align_corners=False)
        fill = x + (1 - w) * up  # x is the known pixels' mean times w: a fully known cell keeps its own mean
    return image * known + fill * mask


def denoising_target(x0: torch.Tensor, mask: torch.Tensor, residual: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(what the model diffuses, what it is told is known) for windows x0 with masks `mask`."""
    if not residual:
        return x0, x0 * (1 - mask)
    background = local_background(x0, mask)
    return (x0 - background) * mask, background


def from_target(sample: torch.Tensor, known: torch.Tensor, residual: bool) -> torch.Tensor:
    """The window a sampled target stands for (the inverse of `denoising_target`)."""
    return known + sample if residual else sample


class ConditionalDenoiser(nn.Module):
    """The conditional model as one module (for the optimizer, EMA and accelerate): UNet + condition embedding."""

    def __init__(self, unet: UNet2DModel, condition: ConditionEmbedding):
        super().__init__()
        self.unet = unet
        self.condition = condition

    def forward(self, x_t, timesteps, mask, known, class_labels, boxes=None) -> torch.Tensor:
        emb = self.condition(class_labels, boxes)
        return self.unet(torch.cat([x_t, mask, known], dim=1), timesteps, class_labels=emb).sample


# ---- the inpainting LDM ----------------------------------------------------------------------------------------

LDM_PRESETS: dict[str, dict[str, Any]] = {
    # vae_blocks sets the latent downsampling (2 ** (len - 1)); the UNet runs on latents.
    "tiny": {"vae_blocks": (32, 64), "unet_blocks": (32, 64), "text_width": 32, "text_layers": 2, "heads": 4},
    "small": {"vae_blocks": (64, 128, 128), "unet_blocks": (64, 128, 256), "text_width": 256, "text_layers": 4,
              "heads": 8},
}


def ldm_preset(preset: str, resolution: int) -> dict[str, Any]:
    """The preset's sizes, checked against `resolution` (a multiple of 8 and of the latent factor)."""
    if preset not in LDM_PRESETS:
        raise DefectgenError(None, f"unknown LDM preset {preset!r}; choose from {', '.join(LDM_PRESETS)}")
    p = LDM_PRESETS[preset]
    factor = latent_factor(p)
    if resolution % (8 * factor // 2 if factor > 1 else 8) or resolution % 8:
        raise DefectgenError(None, f"resolution {resolution} must be a multiple of 8 and of the latent factor {factor}")
    return p


def latent_factor(p: dict[str, Any]) -> int:
    return 2 ** (len(p["vae_blocks"]) - 1)


def build_vae(p: dict[str, Any], resolution: int):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        norm_num_groups=min(32, p["vae_blocks"][0]), block_out_channels=p["vae_blocks"], sample_size=resolution,
        down_block_types=("DownEncoderBlock2D",) * len(p["vae_blocks"]),
        up_block_types=("UpDecoderBlock2D",) * len(p["vae_blocks"]),
    )


def build_ldm_unet(p: dict[str, Any], resolution: int):
    """The 9-channel inpainting UNet (noisy latents, mask, masked-image latents) on latents of `resolution`."""
    from diffusers import UNet2DConditionModel

    n = len(p["unet_blocks"])
    return UNet2DConditionModel(
        sample_size=resolution // latent_factor(p), in_channels=9, out_channels=4, layers_per_block=1,
        block_out_channels=p["unet_blocks"], norm_num_groups=min(32, p["unet_blocks"][0]),
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        cross_attention_dim=p["text_width"], attention_head_dim=p["heads"],
    )


def build_text_encoder(p: dict[str, Any], tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=p["text_width"], intermediate_size=p["text_width"] * 4,
        num_hidden_layers=p["text_layers"], num_attention_heads=p["heads"], max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))


def ldm_scheduler() -> DDPMScheduler:
    """Stable Diffusion's training noise schedule."""
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                         beta_end=0.012, clip_sample=False, steps_offset=1)


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
    """The CLIP tokenizer at `path`, or (None) a byte-level one written into `scratch`."""
    from transformers import CLIPTokenizer

    if path is None:
        return byte_level_clip_tokenizer(scratch)
    try:
        return CLIPTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise DefectgenError(path, f"not a CLIP tokenizer folder or id ({str(e).splitlines()[0]})") from None
