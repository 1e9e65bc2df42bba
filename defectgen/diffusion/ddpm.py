"""The DDPM: two kinds behind one interface, `DdpmModel`, chosen by one lookup in `KINDS` from the kind a model
folder's defectgen.json records (or the kind `build_model` is asked for). Nothing else asks which kind a model is.

  ddpm   `UnconditionalDdpm`: a UNet2DModel on normal images. Its folder is a DDPMPipeline (model_index.json, unet/,
         scheduler/), so `DDPMPipeline.from_pretrained(folder)` opens it. Generates by perturb-and-denoise.
  cddpm  `ConditionalDdpm`: a class- and mask-conditional UNet2DModel, input concat(x_t, mask, x0 * (1 - mask)), so
         in_channels = 2 * C + 1 (with `target: residual`, x_t is the defect over its local background and the
         last input that background: models.denoising_target), with a `ConditionEmbedding` (condition/): a
         learned embedding per class plus a null class for classifier-free guidance, plus an MLP on the box
         geometry of the mask when the labels have boxes.
         Its folder is a `ConditionalDdpmPipeline` (pipelines/pipeline_cddpm.py: model_index.json, unet/,
         scheduler/, condition/); folders saved before it had model_index.json still load through `load_model`.
Both write `defectgen.json` beside the weights (resolution, channels, classes, conditioning, data fingerprint,
training steps, version; folder.py reads and writes it). Weights are safetensors.

This module composes the parts each kind is made of: networks (models.py), pipelines (pipelines/), training
examples (data.py) and losses (losses.py). train_ddpm.py trains either kind through this interface; the synth
generator (synth/ddpm_generator.py) and the diffusion-feature backbone (detect/diffusion_features.py) use it too.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from diffusers import DDPMPipeline, DDPMScheduler, DiffusionPipeline, UNet2DModel

# Saved conditional folders name their condition component ["defectgen.diffusion.ddpm", "ConditionEmbedding"] in
# model_index.json. diffusers takes that class from this module, and finds how to load it by looking up the
# diffusers base classes (ModelMixin) here too: both names must stay importable from this module.
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401
from torch import nn

from defectgen.diffusion.data import ImageExamples, InpaintExamples
from defectgen.diffusion.folder import METADATA_FILE, PIPELINE_INDEX, read_metadata, write_metadata
from defectgen.diffusion.losses import conditional_loss, unconditional_loss
from defectgen.diffusion.models import (
    ConditionalDenoiser,
    ConditionEmbedding,
    build_unet,
    ddpm_scheduler,
    time_embedding_width,
    unet_config,
)
from defectgen.diffusion.pipelines.pipeline_cddpm import ConditionalDdpmPipeline
from defectgen.diffusion.samplers import perturb_and_denoise
from defectgen.diffusion.training import TrainingData
from defectgen.errors import DefectgenError

LossFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Sampling:
    """How a DDPM generates. strength: t0 / T, how far the image is diffused before the reverse process; sigma: the
    std of extra noise inside the mask (unconditional kind); guidance: the classifier-free guidance scale
    (conditional kind)."""

    sampler: str = "ddim"
    steps: int | None = None
    strength: float = 0.5
    sigma: float = 1.0
    guidance: float = 3.0


class DdpmModel(ABC):
    """A built or loaded DDPM: its UNet (and whatever else the kind has), its noise scheduler, its metadata (what
    defectgen.json holds) and the folder it came from. What differs between the kinds is in the abstract methods."""

    kind: ClassVar[str]
    pipeline_class: ClassVar[type[DiffusionPipeline]]
    default_strength: ClassVar[float]  # of `Sampling` when the user gives none
    conditional: ClassVar[bool]  # it paints the class it is given
    condition: ConditionEmbedding | None = None

    def __init__(self, unet: UNet2DModel, scheduler: DDPMScheduler, meta: dict[str, Any] | None = None,
                 path: Path | None = None):
        self.unet, self.scheduler = unet, scheduler
        self.meta: dict[str, Any] = {} if meta is None else meta
        self.path = path

    @property
    def resolution(self) -> int:
        return int(self.meta["resolution"])

    @property
    def channels(self) -> int:
        return int(self.meta["channels"])

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.get("class_names", []))

    @property
    def context(self) -> float:
        """The window around a mask, in model sides (data.crop_or_resize, io.images.mask_window): what the model
        was trained on, so what synthesis must show it. 1 for models saved before the option existed."""
        return float(self.meta.get("context", 1.0))

    def parts(self) -> list[nn.Module]:
        """The networks the model holds (moved, evaluated and saved together)."""
        return [self.unet]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.module().parameters())

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> DdpmModel:
        kwargs = {"device": device} if dtype is None else {"device": device, "dtype": dtype}
        for part in self.parts():
            part.to(**kwargs)
        return self

    def eval(self) -> DdpmModel:
        for part in self.parts():
            part.eval()
        return self

    def _described(self, resolution: int, channels: int, preset: str, class_names: list[str] | None) -> DdpmModel:
        """A freshly built model with its metadata."""
        self.meta = {
            "kind": self.kind, "resolution": int(resolution), "channels": int(channels), "preset": preset,
            "class_names": list(class_names or []), "conditioning": self.conditioning(),
        }
        return self.eval()

    @classmethod
    def load(cls, path: Path, meta: dict[str, Any]) -> DdpmModel:
        """The model in `path`: through its pipeline class when the folder has model_index.json, else (folders saved
        before conditional models were pipelines) one subfolder at a time."""
        if (path / PIPELINE_INDEX).is_file():
            from diffusers.utils import logging as diffusers_logging

            diffusers_logging.disable_progress_bar()  # "Loading pipeline components" is noise next to our own bars
            pipe = cls.pipeline_class.from_pretrained(path, use_safetensors=True, local_files_only=True)
            components = pipe.components
        else:
            components = cls._subfolder_components(path)
        return cls(**components, meta=meta, path=path).eval()

    @classmethod
    def _subfolder_components(cls, path: Path) -> dict[str, Any]:
        return {"unet": UNet2DModel.from_pretrained(path / "unet", use_safetensors=True),
                "scheduler": DDPMScheduler.from_pretrained(path / "scheduler")}

    @classmethod
    @abstractmethod
    def build(cls, resolution: int, channels: int, preset: str = "small", class_names: list[str] | None = None,
              box_geometry: bool = False, target: str = "image", **unet_overrides: Any) -> DdpmModel:
        """A freshly initialised model (see `build_model`)."""

    @abstractmethod
    def conditioning(self) -> dict[str, Any]:
        """What the model is conditioned on, as defectgen.json records it."""

    @abstractmethod
    def module(self) -> nn.Module:
        """The trainable module (sharing its parameters with the model)."""

    @abstractmethod
    def pipeline(self) -> DiffusionPipeline:
        """The model as a diffusers pipeline (sharing its modules): what `save_model` writes."""

    @abstractmethod
    def loss(self, class_dropout: float) -> LossFn:
        """The training loss of `module()`, on the model's own scheduler."""

    @abstractmethod
    def examples(self, normal_samples: list, labeled_samples: list, crop: str, seed: int) -> TrainingData:
        """The training examples this kind learns from (samples as data.read_training_samples returns them)."""

    @abstractmethod
    def training_record(self, crop: str, class_dropout: float) -> dict[str, Any]:
        """The training options defectgen.json records for this kind."""

    @abstractmethod
    def check_class(self, class_name: str | None) -> None:
        """A DefectgenError naming the folder if the model cannot paint `class_name`."""

    @abstractmethod
    def generate(self, x0: torch.Tensor, mask: torch.Tensor, seeds: list[int], class_names: list[str | None],
                 sampling: Sampling) -> torch.Tensor:
        """Defects inside `mask` (B x 1 x H x W in {0, 1}) of the images x0 (B x C x H x W in [-1, 1], at the
        model's resolution), sample b drawn from seeds[b]; B x C x H x W in [-1, 1]."""

    @abstractmethod
    def sampling_info(self, sampling: Sampling) -> dict[str, Any]:
        """The sampling options that shape this kind's output, for the COCO info block."""

    @abstractmethod
    def normal_noise_prediction(self, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The model's noise prediction for x_t with nothing to condition on, as it learned normal surface."""


class UnconditionalDdpm(DdpmModel):
    kind = "ddpm"
    conditional = False
    pipeline_class = DDPMPipeline
    default_strength = 0.5

    @classmethod
    def build(cls, resolution, channels, preset="small", class_names=None, box_geometry=False, target="image",
              **unet_overrides):
        if target != "image":
            raise DefectgenError(None, f"target {target!r} needs the conditional model (give labeled defects)")
        unet = build_unet(resolution, channels, channels, unet_config(preset, resolution, **unet_overrides))
        return cls(unet, ddpm_scheduler())._described(resolution, channels, preset, class_names)

    def conditioning(self) -> dict[str, Any]:
        return {"type": "none"}

    def module(self) -> nn.Module:
        return self.unet

    def pipeline(self) -> DiffusionPipeline:
        return DDPMPipeline(unet=self.unet, scheduler=self.scheduler)

    def loss(self, class_dropout: float) -> LossFn:
        return unconditional_loss(self.scheduler)

    def examples(self, normal_samples, labeled_samples, crop, seed) -> TrainingData:
        return ImageExamples([s.image for s in normal_samples], self.resolution, self.channels, crop, self.context)

    def training_record(self, crop: str, class_dropout: float) -> dict[str, Any]:
        return {"crop": crop, "class_dropout": None}

    def check_class(self, class_name: str | None) -> None:
        """Any class: the model paints no class, the class only labels the sample."""

    def generate(self, x0, mask, seeds, class_names, sampling) -> torch.Tensor:
        return perturb_and_denoise(self.unet, self.scheduler, x0, mask, seeds, sampling.strength, sampling.sigma,
                                   sampling.sampler, sampling.steps)

    def sampling_info(self, sampling: Sampling) -> dict[str, Any]:
        return {"strength": sampling.strength, "sigma": sampling.sigma}

    def normal_noise_prediction(self, x_t, timesteps) -> torch.Tensor:
        return self.unet(x_t, timesteps).sample


class ConditionalDdpm(DdpmModel):
    kind = "cddpm"
    conditional = True
    pipeline_class = ConditionalDdpmPipeline
    default_strength = 1.0

    def __init__(self, unet: UNet2DModel, scheduler: DDPMScheduler, condition: ConditionEmbedding,
                 meta: dict[str, Any] | None = None, path: Path | None = None):
        super().__init__(unet, scheduler, meta, path)
        self.condition = condition

    @classmethod
    def build(cls, resolution, channels, preset="small", class_names=None, box_geometry=False, target="image",
              **unet_overrides):
        cfg = unet_config(preset, resolution, **unet_overrides)
        if not class_names:
            raise DefectgenError(None, "a conditional model needs at least one defect class")
        cfg.update(class_embed_type="identity")  # the UNet takes the condition embedding as its class vector
        condition = ConditionEmbedding(len(class_names), time_embedding_width(cfg), box_geometry, target)
        unet = build_unet(resolution, 2 * channels + 1, channels, cfg)
        return cls(unet, ddpm_scheduler(), condition)._described(resolution, channels, preset, class_names)

    @classmethod
    def _subfolder_components(cls, path: Path) -> dict[str, Any]:
        return {**super()._subfolder_components(path),
                "condition": ConditionEmbedding.from_pretrained(path / "condition", use_safetensors=True)}

    def parts(self) -> list[nn.Module]:
        return [self.unet, self.condition]

    def conditioning(self) -> dict[str, Any]:
        residual = self.condition.residual
        return {
            "type": "class+mask", "null_class": True, "box_geometry": bool(self.condition.config.box_geometry),
            "target": "residual" if residual else "image",
            "unet_input": "concat(x_t, mask, local_background(x0, mask))" if residual else
            "concat(x_t, mask, x0 * (1 - mask))",
        }

    def module(self) -> nn.Module:
        return ConditionalDenoiser(self.unet, self.condition)

    def pipeline(self) -> DiffusionPipeline:
        return ConditionalDdpmPipeline(unet=self.unet, scheduler=self.scheduler, condition=self.condition)

    def loss(self, class_dropout: float) -> LossFn:
        return conditional_loss(self.scheduler, self.condition.null_class, class_dropout,
                                residual=self.condition.residual)

    def examples(self, normal_samples, labeled_samples, crop, seed) -> TrainingData:
        index = {c: i for i, c in enumerate(self.class_names)}
        items = [(s.image, s.defect_mask(), index[s.class_name or "defect"]) for s in labeled_samples]
        # Normals teach the null class to fill in clean surface; capped so defects are not drowned out.
        rng = np.random.default_rng([seed, 2])
        chosen = rng.permutation(len(normal_samples))[:max(len(items), 1)] if normal_samples else []
        return InpaintExamples(items, [normal_samples[i].image for i in chosen], self.resolution, self.channels,
                               null_class=self.condition.null_class, crop=crop, seed=seed, context=self.context)

    def training_record(self, crop: str, class_dropout: float) -> dict[str, Any]:
        return {"crop": crop, "class_dropout": class_dropout}

    def check_class(self, class_name: str | None) -> None:
        if class_name is not None and class_name not in self.class_names:
            raise DefectgenError(self.path, f"the model knows no class {class_name!r}; it knows: "
                                 f"{', '.join(self.class_names)}")

    def generate(self, x0, mask, seeds, class_names, sampling) -> torch.Tensor:
        for c in class_names:
            self.check_class(c)
        # No class given: the first class (the synthesis pipeline normally draws one).
        idx = [self.class_names.index(c) if c is not None else 0 for c in class_names]
        return self.pipeline()(x0, mask, idx, guidance_scale=sampling.guidance, num_inference_steps=sampling.steps,
                               sampler=sampling.sampler, seeds=seeds, strength=sampling.strength).images

    def sampling_info(self, sampling: Sampling) -> dict[str, Any]:
        return {"guidance": sampling.guidance, "classes": self.class_names, "strength": sampling.strength}

    def normal_noise_prediction(self, x_t, timesteps) -> torch.Tensor:
        # The null class and the whole image masked with nothing known: how it was trained on normals (the null
        # class inside random masks). A residual model reads it alike: with nothing known its background is 0.
        b, _, h, w = x_t.shape
        mask, known = x_t.new_ones(b, 1, h, w), torch.zeros_like(x_t)
        classes = torch.full((b,), self.condition.null_class, device=x_t.device, dtype=torch.long)
        boxes = x_t.new_tensor([[0.0, 0.0, 1.0, 1.0]]).expand(b, 4) if self.condition.box_embedding else None
        return ConditionalDenoiser(self.unet, self.condition)(x_t, timesteps, mask, known, classes, boxes)


KINDS: dict[str, type[DdpmModel]] = {k.kind: k for k in (UnconditionalDdpm, ConditionalDdpm)}


def build_model(
    kind: str, resolution: int, channels: int, preset: str = "small", class_names: list[str] | None = None,
    box_geometry: bool = False, target: str = "image", **unet_overrides: Any,
) -> DdpmModel:
    """A freshly initialised model of `kind` (ddpm | cddpm). `unet_overrides` replace preset fields
    (block_out_channels, ...); a conditional model needs `class_names`; `target` (cddpm: image | residual) is what
    it diffuses (models.TARGETS)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {tuple(KINDS)}")
    if channels not in (1, 3):
        raise DefectgenError(None, f"models have 1 or 3 channels, not {channels}")
    return KINDS[kind].build(resolution, channels, preset, class_names, box_geometry, target, **unet_overrides)


def save_model(model: DdpmModel, path: str | Path, **meta: Any) -> Path:
    """Write the diffusers pipeline folder, then defectgen.json (extra `meta` fields are merged into it)."""
    from defectgen import __version__

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.pipeline().save_pretrained(path)
    model.meta.update(meta)
    model.meta["version"] = __version__
    write_metadata(path, model.meta)
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
        model = KINDS[kind].load(path, meta)
    except Exception as e:  # diffusers and safetensors raise many types for a broken folder
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DefectgenError(path, f"cannot load the model weights ({first[:200]})") from None
    return model.to(device)


def model_at_checkpoint(path: str | Path, step: int | None = None, ema: bool = True) -> DdpmModel:
    """The model of training run `path` as one of its checkpoints holds it: at `step` (None: the last checkpoint),
    with the EMA weights (what the run saves as its model) or, with `ema=False`, the trained weights themselves.
    `save_model` writes it as a model folder of its own; its defectgen.json records where the weights came from.
    Raises a DefectgenError when the run has no such checkpoint."""
    from defectgen.diffusion.training import checkpoints, load_checkpoint_weights

    path = Path(path)
    model = load_model(path)
    saved = dict(checkpoints(path))
    if not saved:
        raise DefectgenError(path, "no checkpoints (the run kept none)")
    step = max(saved) if step is None else step
    if step not in saved:
        raise DefectgenError(path, f"no checkpoint at step {step} (saved: {', '.join(map(str, sorted(saved)))})")
    load_checkpoint_weights(model.module(), saved[step], ema=ema)
    model.meta["weights"] = {"run": str(path), "checkpoint": step, "ema": ema}
    return model.eval()
