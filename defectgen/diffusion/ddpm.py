"""DDPM models: building them from presets, saving them as diffusers folders, loading them back.

Two kinds share one layout:
  ddpm   unconditional UNet2DModel on normal images (method 1 of DESIGN.md). The folder is a DDPMPipeline
         (model_index.json, unet/, scheduler/), so `DDPMPipeline.from_pretrained(folder)` opens it.
  cddpm  class- and mask-conditional UNet2DModel (method 2): input concat(x_t, mask, x0 * (1 - mask)), so
         in_channels = 2 * C + 1. The UNet takes its class embedding as a vector (class_embed_type="identity")
         from `ConditionEmbedding` (condition/): a learned embedding per class plus a null class for
         classifier-free guidance, plus an MLP on the box geometry of the mask when the labels have boxes.
         The folder is a `ConditionalDdpmPipeline` (model_index.json, unet/, scheduler/, condition/), so
         `ConditionalDdpmPipeline.from_pretrained(folder)` opens it; folders saved before it had model_index.json
         still load through `load_model`.
Both write `defectgen.json` beside the weights (resolution, channels, classes, conditioning, data fingerprint,
training steps, version; see folder.py). Weights are safetensors.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMPipeline, DDPMScheduler, DiffusionPipeline, ImagePipelineOutput, UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from defectgen.diffusion.folder import METADATA_FILE, PIPELINE_INDEX, has_metadata, read_metadata, update_metadata
from defectgen.diffusion.folder import write_metadata as _write_metadata
from defectgen.diffusion.samplers import guided_inpaint
from defectgen.diffusion.training import TrainConfig, checkpoints, main_decides, process_state, to_tensor, train_loop
from defectgen.errors import DefectgenError
from defectgen.io.datasets import open_dataset
from defectgen.io.images import mask_window, match_channels, resize, to_float
from defectgen.io.output import OutputFolder
from defectgen.io.resolution import square_side
from defectgen.io.sample import Box
from defectgen.masks import MaskGenerator

KINDS = ("ddpm", "cddpm")
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


class ConditionEmbedding(ModelMixin, ConfigMixin):
    """Class (with a null class at index `num_classes`) and optional box geometry -> one vector that the
    UNet adds to its timestep embedding."""

    @register_to_config
    def __init__(self, num_classes: int, embed_dim: int, box_geometry: bool = True):
        super().__init__()
        self.class_embedding = nn.Embedding(num_classes + 1, embed_dim)
        # Box geometry (x0, y0, x1, y1 in [0, 1] of the model's window) through a small MLP.
        self.box_embedding = nn.Sequential(nn.Linear(4, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim)) \
            if box_geometry else None

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    def forward(self, class_labels: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.class_embedding(class_labels)
        if self.box_embedding is not None and boxes is not None:
            emb = emb + self.box_embedding(boxes.to(emb.dtype))
        return emb


class ConditionalDenoiser(nn.Module):
    """The conditional model as one module (for the optimizer, EMA and accelerate): UNet + condition embedding."""

    def __init__(self, unet: UNet2DModel, condition: ConditionEmbedding):
        super().__init__()
        self.unet = unet
        self.condition = condition

    def forward(self, x_t, timesteps, mask, known, class_labels, boxes=None) -> torch.Tensor:
        emb = self.condition(class_labels, boxes)
        return self.unet(torch.cat([x_t, mask, known], dim=1), timesteps, class_labels=emb).sample


class ConditionalDdpmPipeline(DiffusionPipeline):
    """The conditional DDPM as a diffusers pipeline: `save_pretrained` writes model_index.json, unet/, scheduler/
    and condition/; `ConditionalDdpmPipeline.from_pretrained(folder)` opens it again (a local folder never touches
    the network; model_index.json names ConditionEmbedding by this module, which diffusers finds once imported).

    Calling it paints a defect of `class_labels` inside `mask_image` with classifier-free guidance; the outside
    keeps `image`. Every random draw of sample b comes from seeds[b] (default: b)."""

    def __init__(self, unet: UNet2DModel, scheduler: DDPMScheduler, condition: ConditionEmbedding):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, condition=condition)

    @torch.no_grad()
    def __call__(
        self, image: torch.Tensor, mask_image: torch.Tensor, class_labels: torch.Tensor | list[int],
        guidance_scale: float = 3.0, num_inference_steps: int | None = None, sampler: str = "ddim",
        seeds: list[int] | None = None, boxes: torch.Tensor | None = None, output_type: str = "pt",
        return_dict: bool = True, strength: float = 1.0,
    ) -> ImagePipelineOutput | tuple:
        """image: B x C x H x W in [-1, 1]; mask_image: B x 1 x H x W in {0, 1}; class_labels: B class indices
        (the model's class_names order; num_classes is the null class). boxes default to the masks' extents when
        the model was trained with box geometry. strength < 1: start from `image` noised to strength * T inside
        the mask too (SDEdit), instead of from noise. Returns images B x C x H x W in [-1, 1] (output_type "pt") or
        B x H x W x C in [0, 1] ("np")."""
        device = self.unet.device
        x0 = image.to(device, torch.float32)
        mask = mask_image.to(device, torch.float32)
        classes = torch.as_tensor(class_labels, dtype=torch.long, device=device)
        if boxes is None and self.condition.box_embedding is not None:
            geo = [box_geometry(m[0].cpu().numpy() > 0.5) for m in mask]
            boxes = torch.from_numpy(np.stack(geo)).to(device)
        seeds = list(range(x0.shape[0])) if seeds is None else seeds
        denoiser = ConditionalDenoiser(self.unet, self.condition).eval()
        out = guided_inpaint(denoiser, self.scheduler, x0, mask, classes, self.condition.null_class, seeds,
                             guidance_scale, boxes, sampler, num_inference_steps, strength)
        if output_type == "np":
            out = ((out.float().cpu() + 1) / 2).permute(0, 2, 3, 1).numpy()
        return ImagePipelineOutput(images=out) if return_dict else (out,)


@dataclass
class DdpmModel:
    """A built or loaded model: the UNet (and condition embedding), its noise scheduler, and its metadata."""

    kind: str
    unet: UNet2DModel
    scheduler: DDPMScheduler
    meta: dict[str, Any] = field(default_factory=dict)
    condition: ConditionEmbedding | None = None
    path: Path | None = None

    @property
    def conditional(self) -> bool:
        return self.kind == "cddpm"

    @property
    def resolution(self) -> int:
        return int(self.meta["resolution"])

    @property
    def channels(self) -> int:
        return int(self.meta["channels"])

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.get("class_names", []))

    def module(self) -> nn.Module:
        """The trainable module: the UNet, or the UNet with its condition embedding."""
        if self.conditional:
            return ConditionalDenoiser(self.unet, self.condition)
        return self.unet

    def pipeline(self) -> DiffusionPipeline:
        """The model as a diffusers pipeline (sharing its modules): a DDPMPipeline or a ConditionalDdpmPipeline."""
        if self.conditional:
            return ConditionalDdpmPipeline(unet=self.unet, scheduler=self.scheduler, condition=self.condition)
        return DDPMPipeline(unet=self.unet, scheduler=self.scheduler)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.module().parameters())

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> DdpmModel:
        kwargs = {"device": device} if dtype is None else {"device": device, "dtype": dtype}
        self.unet.to(**kwargs)
        if self.condition is not None:
            self.condition.to(**kwargs)
        return self


def build_model(
    kind: str, resolution: int, channels: int, preset: str = "small", class_names: list[str] | None = None,
    box_geometry: bool = False, **unet_overrides: Any,
) -> DdpmModel:
    """A freshly initialised model. `unet_overrides` replace preset fields (block_out_channels, ...)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    if channels not in (1, 3):
        raise DefectgenError(None, f"models have 1 or 3 channels, not {channels}")
    cfg = {**preset_config(preset), **unet_overrides}
    multiple = 2 ** (len(cfg["block_out_channels"]) - 1)
    if resolution % multiple or resolution < multiple:
        raise DefectgenError(None, f"resolution {resolution} must be a multiple of {multiple} for preset {preset!r}")
    condition = None
    if kind == "cddpm":
        if not class_names:
            raise DefectgenError(None, "a conditional model needs at least one defect class")
        cfg.update(class_embed_type="identity")
        in_channels = 2 * channels + 1
        embed_dim = cfg["block_out_channels"][0] * 4  # UNet2DModel's time-embedding width
        condition = ConditionEmbedding(len(class_names), embed_dim, box_geometry)
    else:
        in_channels = channels
    unet = UNet2DModel(sample_size=resolution, in_channels=in_channels, out_channels=channels, **cfg)
    scheduler = DDPMScheduler(num_train_timesteps=TRAIN_TIMESTEPS, beta_schedule="linear")
    meta = {
        "kind": kind, "resolution": int(resolution), "channels": int(channels), "preset": preset,
        "class_names": list(class_names or []),
        "conditioning": _conditioning(kind, box_geometry),
    }
    return DdpmModel(kind, unet.eval(), scheduler, meta, condition.eval() if condition else None)


def _conditioning(kind: str, box_geometry: bool) -> dict[str, Any]:
    if kind == "ddpm":
        return {"type": "none"}
    return {
        "type": "class+mask", "unet_input": "concat(x_t, mask, x0 * (1 - mask))", "null_class": True,
        "box_geometry": bool(box_geometry),
    }


def save_model(model: DdpmModel, path: str | Path, **meta: Any) -> Path:
    """Write the diffusers pipeline folder, then defectgen.json (extra `meta` fields are merged into it)."""
    from defectgen import __version__

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.pipeline().save_pretrained(path)
    model.meta.update(meta)
    model.meta["version"] = __version__
    _write_metadata(path, model.meta)
    model.path = path
    return path


def load_model(path: str | Path, device: str | torch.device = "cpu") -> DdpmModel:
    """Open a folder written by `save_model` (or by an older defectgen, without model_index.json); anything else
    is a DefectgenError naming the folder or its defectgen.json."""
    path = Path(path)
    meta = read_metadata(path)
    kind = meta.get("kind")
    if kind not in KINDS:
        raise DefectgenError(path / METADATA_FILE, f"not a DDPM model (kind {kind!r})")
    for key in ("resolution", "channels"):
        if not isinstance(meta.get(key), int):
            raise DefectgenError(path / METADATA_FILE, f"missing or invalid {key!r}")
    try:
        unet, scheduler, condition = _load_modules(path, kind)
    except Exception as e:  # diffusers and safetensors raise many types for a broken folder
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DefectgenError(path, f"cannot load the model weights ({first[:200]})") from None
    model = DdpmModel(kind, unet.eval(), scheduler, meta, condition.eval() if condition else None, path)
    return model.to(device)


def _load_modules(path: Path, kind: str) -> tuple[UNet2DModel, DDPMScheduler, ConditionEmbedding | None]:
    """UNet, scheduler and condition embedding: through the pipeline class when the folder has model_index.json,
    else (folders saved before conditional models were pipelines) one subfolder at a time."""
    if (path / PIPELINE_INDEX).is_file():
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()  # "Loading pipeline components" is noise next to our own bars
        pipeline_class = ConditionalDdpmPipeline if kind == "cddpm" else DDPMPipeline
        pipe = pipeline_class.from_pretrained(path, use_safetensors=True, local_files_only=True)
        return pipe.unet, pipe.scheduler, getattr(pipe, "condition", None)
    unet = UNet2DModel.from_pretrained(path / "unet", use_safetensors=True)
    scheduler = DDPMScheduler.from_pretrained(path / "scheduler")
    condition = ConditionEmbedding.from_pretrained(path / "condition", use_safetensors=True) \
        if kind == "cddpm" else None
    return unet, scheduler, condition


# ---- training ------------------------------------------------------------------------------------------------

class ImageExamples:
    """Normal images for the unconditional model: random crops (or resized copies), random horizontal flips."""

    def __init__(self, images: list[np.ndarray], resolution: int, channels: int, crop: str = "random"):
        self.images, self.resolution, self.channels, self.crop = images, resolution, channels, crop

    def __len__(self) -> int:
        return len(self.images)

    def example(self, index: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        image = match_channels(to_float(self.images[index]), self.channels)
        image = _crop_or_resize(image, None, self.resolution, self.crop, rng)[0]
        if rng.random() < 0.5:
            image = image[:, ::-1]
        return {"image": to_tensor(image)}


class InpaintExamples:
    """Labeled defects (image, mask, class) for the conditional model; normals, if given, are added with random
    Perlin masks and the null class, so the unconditional branch of guidance learns to fill in normal surface."""

    def __init__(self, labeled: list[tuple[np.ndarray, np.ndarray, int]], normals: list[np.ndarray],
                 resolution: int, channels: int, null_class: int, crop: str = "random", seed: int = 0):
        self.labeled, self.normals = labeled, normals
        self.resolution, self.channels, self.null_class, self.crop = resolution, channels, null_class, crop
        self.masks = MaskGenerator("perlin", seed=seed)

    def __len__(self) -> int:
        return len(self.labeled) + len(self.normals)

    def example(self, index: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        if index < len(self.labeled):
            image, mask, cls = self.labeled[index]
        else:
            image, cls = self.normals[index - len(self.labeled)], self.null_class
            mask = self.masks(int(rng.integers(2**31)), image.shape[0], image.shape[1])[0]
        image = match_channels(to_float(image), self.channels)
        image, mask = _crop_or_resize(image, mask, self.resolution, self.crop, rng)
        if rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        return {"image": to_tensor(image), "mask": torch.from_numpy(mask[None].astype(np.float32)),
                "class": torch.tensor(cls, dtype=torch.long), "box": torch.from_numpy(box_geometry(mask))}


def box_geometry(mask: np.ndarray) -> np.ndarray:
    """The mask's extent as (x0, y0, x1, y1) fractions of the window: the box geometry the model is given."""
    box = Box.from_mask(mask)
    h, w = mask.shape[:2]
    if box is None:
        return np.zeros(4, np.float32)
    return np.array([box.x0 / w, box.y0 / h, box.x1 / w, box.y1 / h], np.float32)


def _crop_or_resize(image: np.ndarray, mask: np.ndarray | None, size: int, crop: str,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    h, w = image.shape[:2]
    if crop == "random" and (h > size or w > size):
        if mask is not None:
            y0, x0, ch, cw = mask_window(h, w, mask, size, rng)
        else:
            ch, cw = min(size, h), min(size, w)
            y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        image = image[y0:y0 + ch, x0:x0 + cw]
        mask = None if mask is None else mask[y0:y0 + ch, x0:x0 + cw]
    shrink = image.shape[0] > size or image.shape[1] > size
    image = resize(image, size, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    if mask is not None:
        mask = resize(mask.astype(np.uint8), size, size, nearest=True).astype(bool)
    return image, mask


def unconditional_loss(scheduler: DDPMScheduler):
    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None):
        x0 = batch["image"]
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=generator,
                          device=x0.device)
        pred = model(scheduler.add_noise(x0, noise, t), t).sample
        return F.mse_loss(pred.float(), noise.float())
    return loss_fn


def conditional_loss(scheduler: DDPMScheduler, null_class: int, class_dropout: float = 0.1,
                     outside_weight: float = 0.1):
    """Noise-prediction loss, weighted towards the mask (the outside is given to the model as input)."""
    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None):
        x0, mask, cls = batch["image"], batch["mask"], batch["class"]
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=generator,
                          device=x0.device)
        drop = torch.rand(cls.shape, generator=generator, device=cls.device) < class_dropout
        cls = torch.where(drop, torch.full_like(cls, null_class), cls)
        pred = model(scheduler.add_noise(x0, noise, t), t, mask, x0 * (1 - mask), cls, batch.get("box"))
        weight = mask + outside_weight * (1 - mask)
        err = (pred.float() - noise.float()) ** 2 * weight
        return err.sum() / (weight.sum() * x0.shape[1]).clamp_min(1.0)
    return loss_fn


def _fingerprint(paths: list[Path]) -> dict[str, Any]:
    """sha256 over the training files' bytes (sorted), so a model records exactly which data made it."""
    digest = hashlib.sha256()
    for p in sorted(set(paths)):
        digest.update(p.name.encode())
        digest.update(hashlib.sha256(p.read_bytes()).digest())
    return {"sha256": digest.hexdigest(), "files": len(set(paths))}


def train_ddpm(
    out: str | Path,
    normals: str | Path | None = None,
    labeled: str | Path | None = None,
    *,
    preset: str = "small",
    resolution: int | str | None = None,
    crop: str = "random",
    class_dropout: float = 0.1,
    config: TrainConfig | None = None,
    resume: bool = False,
    trust_checkpoint: bool = False,
    overwrite: bool = False,
    on_bad: str = "error",
    log=print,
    callback=None,
) -> DdpmModel:
    """Train the unconditional DDPM (normals only) or the conditional one (`labeled` given) and save it to `out`.

    resolution: the side of the square training windows (cut at native scale, `crop` random, or the image
    resized, `crop` resize), `N` or `NxN` as `parse_resolution` reads it (a multiple of the preset's
    `min_resolution_multiple`); a non-square HxW is refused. None: the shortest image side, at most 256.

    Returns the trained model (EMA weights when EMA is on), loaded back from `out`. `trust_checkpoint` lets
    `resume` load checkpoints that hold pickle files (saved by older defectgen versions). `on_bad` "skip" trains
    without unreadable images (each named in a warning) instead of stopping at the first."""
    cfg = config or TrainConfig()
    _check_training_options(normals, labeled, preset, crop, class_dropout)
    resolution = square_side(resolution, min_resolution_multiple(preset), "the DDPM")
    kind = "cddpm" if labeled is not None else "ddpm"
    normal_samples, labeled_samples = _read_training_samples(normals, labeled, on_bad)
    used = labeled_samples + normal_samples
    channels = 3 if any(s.channels == 3 for s in used) else 1
    if resolution is None:
        multiple = min_resolution_multiple(preset)
        side = min(min(s.height, s.width) for s in used)
        resolution = max(multiple, min(256, side) // multiple * multiple)
    class_names = sorted({s.class_name or "defect" for s in labeled_samples})
    boxes = bool(labeled_samples) and all(s.boxes for s in labeled_samples)

    folder, is_main = _prepare_run_folder(out, normals, labeled, resume, overwrite)
    if not is_main:
        log = lambda message: None  # noqa: E731
    torch.manual_seed(cfg.seed)
    model = build_model(kind, resolution, channels, preset, class_names, box_geometry=boxes)
    data, loss_fn = _examples_and_loss(model, normal_samples, labeled_samples, crop, class_dropout, cfg.seed)
    meta = _training_meta(kind, normals, labeled, normal_samples, labeled_samples, crop, class_dropout, cfg)
    log(f"training {kind} ({preset}, {model.num_parameters() / 1e6:.2f}M parameters) at {resolution}x{resolution}, "
        f"{channels} channel(s), on {len(data)} examples" + (f", classes: {', '.join(class_names)}" if
                                                               class_names else ""))

    def save_fn(module: nn.Module, folder: Path) -> None:
        save_model(model, folder, **meta)  # `module` shares its parameters with `model`

    try:
        result = train_loop(model.module() if kind == "cddpm" else model.unet, loss_fn, data, out, cfg, save_fn,
                            resume=resume, callback=callback, log=log, trust_checkpoint=trust_checkpoint)
    except BaseException:
        if is_main:
            folder.abandon()  # interrupted before the first checkpoint: no empty run folder stays behind
        raise
    if is_main and result.loss is not None and has_metadata(out):  # for `defectgen runs`
        update_metadata(out, {"result": {"final_loss": result.loss, "images_per_second": result.images_per_second,
                                         "seconds": round(result.seconds, 1)}})
    return load_model(out)


def _check_training_options(normals, labeled, preset: str, crop: str, class_dropout: float) -> None:
    if normals is None and labeled is None:
        raise DefectgenError(None, "give `normals` (unconditional model) or `labeled` (conditional model)")
    if crop not in ("random", "resize"):
        raise DefectgenError(None, f"`crop` must be 'random' or 'resize', not {crop!r}")
    if not 0 <= class_dropout < 1:
        raise DefectgenError(None, "`class_dropout` must lie in [0, 1)")
    preset_config(preset)


def _read_training_samples(normals, labeled, on_bad: str = "error") -> tuple[list, list]:
    """(normal samples, labeled defect samples), read into memory; an empty source is a DefectgenError."""
    normal_samples = []
    if normals is not None:
        ds = open_dataset(normals, on_bad=on_bad)
        if ds.format == "mvtec":
            ds = ds.select(split="train", normal=True)
        else:
            ds = ds.select(normal=True)
        if not len(ds):
            raise DefectgenError(normals, "no normal images found")
        normal_samples = ds.read_all("normal", required=True)
        _warn_skipped(ds)
    labeled_samples = []
    if labeled is not None:
        ds = open_dataset(labeled, on_bad=on_bad).labeled_defects()
        if not len(ds):
            raise DefectgenError(labeled, "no labeled defects (images with masks or boxes) found")
        labeled_samples = _with_defect_pixels(ds.read_all("labeled", required=True), labeled)
        _warn_skipped(ds)
    return normal_samples, labeled_samples


def _warn_skipped(ds) -> None:
    import sys

    for problem in ds.skipped:
        sys.stderr.write(f"warning: skipped unreadable {problem}\n")


def _with_defect_pixels(samples: list, source) -> list:
    """The labeled samples whose mask (or boxes) marks at least one pixel; each one without is named in a warning,
    and none left is an error: a conditional model trained on empty masks learns nothing of defects."""
    import sys

    kept = []
    for s in samples:
        if s.defect_mask().any():
            kept.append(s)
        else:
            sys.stderr.write(f"warning: {s.mask_path or s.path}: empty mask, not a labeled defect; skipped\n")
    if not kept:
        raise DefectgenError(source, f"every one of the {len(samples)} labeled image(s) has an empty mask: no "
                             "defect to learn from")
    return kept


def _prepare_run_folder(out, normals, labeled, resume: bool, overwrite: bool) -> tuple[OutputFolder, bool]:
    """The run folder (prepared by the main process only, under `torchrun` or `accelerate launch`; when it refuses,
    every process stops with its error) and whether this process is the main one (only it prepares, logs and
    records)."""
    state = process_state()  # joins the launcher's process group, also without a GPU
    folder = OutputFolder(out, overwrite=overwrite and not resume, resume=resume, verb="train-ddpm",
                          protect=[normals, labeled], worth_keeping=lambda d: bool(checkpoints(d)))
    main_decides(folder.prepare)
    return folder, state.is_main_process


def _examples_and_loss(model: DdpmModel, normal_samples: list, labeled_samples: list, crop: str,
                       class_dropout: float, seed: int):
    """The training examples and loss of `model`'s kind."""
    resolution, channels = model.resolution, model.channels
    if not model.conditional:
        data = ImageExamples([s.image for s in normal_samples], resolution, channels, crop)
        return data, unconditional_loss(model.scheduler)
    class_names = model.class_names
    index = {c: i for i, c in enumerate(class_names)}
    items = [(s.image, s.defect_mask(), index[s.class_name or "defect"]) for s in labeled_samples]
    # Normals teach the null class to fill in clean surface; capped so defects are not drowned out.
    rng = np.random.default_rng([seed, 2])
    chosen = rng.permutation(len(normal_samples))[:max(len(items), 1)] if normal_samples else []
    data = InpaintExamples(items, [normal_samples[i].image for i in chosen], resolution, channels,
                           null_class=len(class_names), crop=crop, seed=seed)
    return data, conditional_loss(model.scheduler, len(class_names), class_dropout)


def _training_meta(kind: str, normals, labeled, normal_samples: list, labeled_samples: list, crop: str,
                   class_dropout: float, cfg: TrainConfig) -> dict[str, Any]:
    """What defectgen.json records about the training run: class counts, options, and the data's fingerprint."""
    counts: dict[str, int] = {}
    for s in labeled_samples:
        counts[s.class_name or "defect"] = counts.get(s.class_name or "defect", 0) + 1
    used = labeled_samples + normal_samples
    paths = [s.path for s in used if s.path] + [s.mask_path for s in used if s.mask_path]
    return {
        "class_counts": counts, "crop": crop, "class_dropout": class_dropout if kind == "cddpm" else None,
        "training": {"steps": cfg.steps, "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": cfg.seed,
                     "mixed_precision": cfg.mixed_precision, "grad_accum": cfg.grad_accum, "ema": cfg.ema},
        "data": {"normals": str(normals) if normals else None, "labeled": str(labeled) if labeled else None,
                 "normal_images": len(normal_samples), "labeled_images": len(labeled_samples),
                 "fingerprint": _fingerprint(paths)},
    }
