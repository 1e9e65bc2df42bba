"""The options of one training run as one record each: `DdpmTrainingOptions` (`defectgen train-ddpm`,
train_ddpm.py) and `LdmTrainingOptions` (`defectgen train-ldm`, train_ldm.py). The command line builds them from its
flags and the library takes them whole; the optimiser side, shared by both, is `TrainConfig` (training.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from defectgen.diffusion.training import TrainConfig


@dataclass
class DdpmTrainingOptions:
    """preset:          UNet size (models.py: tiny, small, base).
    resolution:         side of the square training windows, `N` or `NxN` (a multiple of the preset's
                        `min_resolution_multiple`); None: the shortest image side, at most 256.
    crop:               larger images: `random` windows at native scale, or `resize` the whole image.
    context:            `random` windows span at least this many model sides of native pixels (resized to the
                        model): more surface around each defect, less of its detail. Synthesis uses the same.
    target:             conditional model: what it diffuses, `image` (the window) or `residual` (the defect over the
                        surface filled in under the mask from around it, so the model learns only what the defect
                        changes). Recorded in the model; synthesis uses the same.
    class_dropout:      conditional model: share of steps trained on the null class (classifier-free guidance).
    config:             the optimiser, schedule, checkpoints and precision.
    resume, overwrite:  continue in the run folder, or clear it (only a folder defectgen made).
    trust_checkpoint:   let `resume` load checkpoints that hold pickle files (older defectgen versions).
    on_bad:             `skip` trains without unreadable images (each named in a warning); `error` stops."""

    preset: str = "small"
    resolution: int | str | None = None
    crop: str = "random"
    context: float = 1.0
    target: str = "image"
    class_dropout: float = 0.1
    config: TrainConfig = field(default_factory=TrainConfig)
    resume: bool = False
    overwrite: bool = False
    trust_checkpoint: bool = False
    on_bad: str = "error"


@dataclass
class LdmTrainingOptions:
    """base:               `tiny` (built here, offline) or a diffusers inpainting folder or hub id.
    preset:             size of a `tiny` base (tiny or small).
    prompts:            prompt-library file whose templates caption each labeled image from its class.
    lora_rank:          LoRA rank through peft; 0 fine-tunes the whole UNet.
    resolution:         side of the square windows cut around the masks (a multiple of 8); None: 64 for `tiny`,
                        else the base model's own.
    tokenizer:          CLIP tokenizer folder for a `tiny` base (default: a byte-level one).
    vae_steps:          `tiny`: VAE training steps before fine-tuning.
    train_text_encoder: also train the text encoder (frozen by default).
    fmt:                the labeled set's layout (`auto`: detected).
    config, resume, overwrite, trust_checkpoint: as for the DDPM."""

    base: str = "tiny"
    preset: str = "tiny"
    prompts: str | Path | None = None
    lora_rank: int = 0
    resolution: int | str | None = None
    tokenizer: str | Path | None = None
    vae_steps: int = 2000
    train_text_encoder: bool = False
    fmt: str = "auto"
    config: TrainConfig = field(default_factory=TrainConfig)
    resume: bool = False
    overwrite: bool = False
    trust_checkpoint: bool = False
