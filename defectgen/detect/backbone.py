"""Frozen multi-scale feature extractors from transformers models (a folder or a hub id), or `tiny` for tests.

Models that AutoBackbone supports (ResNet, ConvNeXt, DINOv2, Swin, ...) give their stage outputs; others
(MobileNetV2, ...) are opened with AutoModel and their 4-D `hidden_states` are used. Either way the maps are
indexed by stride (input side / map side), and a request for stride s returns the last map at that stride,
the usual PatchCore/DeSTSeg choice (for the shared MobileNetV2 at 256: stride 4 -> hidden_states[1],
8 -> [4], 16 -> [11], 32 -> [15]).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from defectgen.detect.fusion import SEPARATOR, FusedBackbone
from defectgen.errors import DefectgenError

TINY = "tiny"
# The default of validate and inspect --against: a real ImageNet model, fetched from the hub on first use (as
# diffusers and anomalib fetch theirs) and cached; offline, a local folder is given once instead.
DEFAULT_BACKBONE = "google/mobilenet_v2_1.0_224"
BACKBONE_ENV = "DEFECTGEN_BACKBONE"
TINY_WARNING = ("backbone tiny has random weights: its features are random and these metrics are meaningless "
                "(it exists for tests); give `backbone` a pretrained model")
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@contextlib.contextmanager
def _quiet_transformers():
    """transformers prints a load report for the classifier head we drop; it is noise to our users."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


class Backbone(nn.Module):
    """images (B x C x H x W float in [0, 1], C = 1 or 3) -> feature maps at the requested strides.

    Always frozen and in eval mode: BatchNorm statistics must not move (the shared MobileNetV2 carries folded
    BatchNorm), and teachers and patch extractors are fixed by definition.
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float], name: str,
                 use_backbone_api: bool):
        super().__init__()
        self.model = model
        self.name = name
        self.use_backbone_api = use_backbone_api
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))
        self.in_channels = int(getattr(model.config, "num_channels", 3) or 3)
        self._index_cache: dict[tuple[int, int, tuple[int, ...]], list[int]] = {}
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Backbone:  # noqa: ARG002 - frozen whatever the caller asks
        return super().train(False)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] != self.in_channels:
            if images.shape[1] == 1:
                images = images.expand(-1, self.in_channels, -1, -1)  # gray fed as three equal channels
            elif self.in_channels == 1:
                images = images.mean(dim=1, keepdim=True)
        return (images - self.mean[:, : images.shape[1]]) / self.std[:, : images.shape[1]]

    def all_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Every 4-D feature map the model exposes, shallow to deep."""
        x = self._prepare(images)
        kwargs = {"pixel_values": x} if self.use_backbone_api else {"pixel_values": x, "output_hidden_states": True}
        if x.is_cuda and torch.cuda.device_count() > 1 and x.shape[0] > 1:
            # Feature extraction uses every visible GPU: the batch is split across them and gathered back.
            out = nn.parallel.data_parallel(self.model, (), module_kwargs=kwargs)
        else:
            out = self.model(**kwargs)
        if self.use_backbone_api:
            return list(out.feature_maps)
        return [h for h in out.hidden_states if h.dim() == 4]

    def layer_indices(self, size: tuple[int, int], strides: Sequence[int]) -> list[int]:
        """Indices into `all_maps` of the last map at each stride, found with one dummy pass per size."""
        key = (int(size[0]), int(size[1]), tuple(int(s) for s in strides))
        if key not in self._index_cache:
            with torch.no_grad():
                maps = self.all_maps(torch.zeros(1, self.in_channels, *size, device=self.mean.device))
            if not maps:
                raise DefectgenError(self.name, "backbone gives no spatial feature maps; use a convolutional "
                                     "model or one that transformers' AutoBackbone supports")
            found = {}
            for i, m in enumerate(maps):
                found[round(size[0] / m.shape[-2])] = i
            chosen = []
            for s in strides:
                # a model without that exact stride (ViTs: 14 everywhere) gets its nearest one
                nearest = min(found, key=lambda have, s=s: (abs(have - s), -have))
                chosen.append(found[nearest])
            self._index_cache[key] = chosen
        return self._index_cache[key]

    def forward(self, images: torch.Tensor, strides: Sequence[int] = (8, 16)) -> list[torch.Tensor]:
        maps = self.all_maps(images)
        return [maps[i] for i in self.layer_indices(tuple(images.shape[-2:]), strides)]

    def channels(self, strides: Sequence[int], size: int = 64) -> list[int]:
        with torch.no_grad():
            maps = self.forward(torch.zeros(1, self.in_channels, size, size, device=self.mean.device), strides)
        return [int(m.shape[1]) for m in maps]


def tiny_model(seed: int = 0) -> nn.Module:
    """A small random-weight MobileNetV2 (~0.4M parameters), built in code: the backbone of the tests."""
    from transformers import MobileNetV2Config, MobileNetV2Model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MobileNetV2Model(MobileNetV2Config(depth_multiplier=0.35, image_size=64))
        # the library's init (std 0.02) shrinks activations ~1e-13 after 16 blocks; He init keeps them O(1)
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        return model


def _normalisation(spec: str) -> tuple[Sequence[float], Sequence[float]]:
    """The model's own mean and std from its preprocessor config; ImageNet's when it has none."""
    try:
        from transformers import AutoImageProcessor

        with _quiet_transformers():
            proc = AutoImageProcessor.from_pretrained(spec)
        mean, std = getattr(proc, "image_mean", None), getattr(proc, "image_std", None)
        if mean is not None and std is not None:
            return list(mean), list(std)
    except (OSError, ValueError, ImportError):
        pass
    return _IMAGENET


def resolve_backbone(spec: str | None) -> str:
    """The backbone to use: `spec` when given, else $DEFECTGEN_BACKBONE, else DEFAULT_BACKBONE. (A workspace sets
    it once with `backbone: FOLDER` in defectgen.yaml, which reaches here as `spec`.)"""
    return str(spec) if spec else os.environ.get(BACKBONE_ENV) or DEFAULT_BACKBONE


def is_pretrained(spec: str) -> bool:
    return TINY not in spec.split(SEPARATOR)


def _fused(spec: str, device, feature_timesteps, feature_dim):

    parts = spec.split(SEPARATOR)
    if not all(p.strip() for p in parts):
        raise DefectgenError(spec, "a fused backbone names each part: A+B (a transformers model, tiny or a DDPM run "
                             "folder each)")
    ddpm = [(Path(p) / "defectgen.json").is_file() for p in parts]
    if (feature_timesteps is not None or feature_dim is not None) and not any(ddpm):
        raise DefectgenError(spec, "`feature_timesteps` and `feature_dim` apply only to a DDPM run folder as "
                             "`backbone`")
    return FusedBackbone([load_backbone(p, device, feature_timesteps if d else None, feature_dim if d else None)
                          for p, d in zip(parts, ddpm, strict=True)]).to(device)


def load_backbone(spec: str | None = None, device: str | torch.device = "cpu",
                  feature_timesteps: Sequence[int] | None = None, feature_dim: int | None = None) -> Backbone:
    """A frozen backbone from a local folder or hub id (transformers `from_pretrained`), or `tiny`; None means
    `resolve_backbone`'s default. A defectgen DDPM run folder (defectgen.json of kind ddpm or cddpm) gives a
    `DiffusionBackbone` noised to `feature_timesteps` and projected to `feature_dim` channels a level. `A+B`
    fuses backbones (`FusedBackbone`: a transformers model beside a DDPM run, say)."""
    spec = resolve_backbone(spec)
    folder = Path(spec)
    if SEPARATOR in spec and not folder.exists():
        return _fused(spec, device, feature_timesteps, feature_dim)
    if (folder / "defectgen.json").is_file():
        from defectgen.detect.diffusion_features import load_diffusion_backbone
        from defectgen.diffusion.folder import read_metadata

        return load_diffusion_backbone(folder, read_metadata(folder), device, feature_timesteps, feature_dim)
    if feature_timesteps is not None or feature_dim is not None:
        raise DefectgenError(spec, "`feature_timesteps` and `feature_dim` apply only to a DDPM run folder as "
                             "`backbone`")
    if spec == TINY:
        return Backbone(tiny_model(), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), TINY, False).to(device)
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise DefectgenError(folder, "not a backbone: neither a transformers model (no config.json) nor a "
                             "defectgen DDPM run (no defectgen.json)")
    from transformers import AutoBackbone, AutoConfig, AutoModel

    where = Path(spec) if Path(spec).exists() else spec
    if not Path(spec).exists() and (spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec):
        raise DefectgenError(spec, "backbone folder not found (give a transformers model folder, a hub id, or tiny)")
    try:
        with _quiet_transformers():
            config = AutoConfig.from_pretrained(spec)
            try:
                stages = getattr(config, "stage_names", None) or []
                model = AutoBackbone.from_pretrained(spec, out_indices=list(range(1, len(stages))) or None)
                backbone_api = True
            except ValueError:  # not an AutoBackbone architecture: its hidden states serve
                model = AutoModel.from_pretrained(spec)
                backbone_api = False
    except (OSError, ValueError) as e:
        if not Path(spec).exists() and _offline_miss(e):
            raise DefectgenError(spec, "backbone is not in the local Hugging Face cache and the hub cannot be "
                                 "reached: give `backbone` a local transformers folder (such as "
                                 "../shared/weights/mobilenet_v2_1.0_224), or set it once with "
                                 f"{BACKBONE_ENV}=FOLDER or 'backbone: FOLDER' in defectgen.yaml") from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DefectgenError(where, f"cannot load a transformers backbone ({first})") from None
    mean, std = _normalisation(spec)
    return Backbone(model, mean, std, str(spec), backbone_api).to(device)


def first_available(candidates: Sequence[str | None]) -> str | None:
    """The first of `candidates` that loads (a folder that exists and holds a backbone, a hub id that is cached or
    downloadable), or None: how the quickstart picks a pretrained backbone before it settles for `tiny`."""
    for spec in candidates:
        if not spec:
            continue
        try:
            load_backbone(str(spec))
        except DefectgenError:
            continue
        return str(spec)
    return None


def _offline_miss(error: Exception) -> bool:
    """Whether transformers failed because the model is neither cached nor downloadable (no network, or
    HF_HUB_OFFLINE), rather than because the model is broken."""
    text = str(error).lower()
    return any(k in text for k in ("offline", "connect", "cached", "couldn't", "internet", "resolve", "network"))


def backbone_record(backbone) -> dict[str, Any]:
    """What a saved detector records to load its backbone again: the name, and a diffusion backbone's options."""
    extra = {"backbone_options": backbone.options()} if hasattr(backbone, "options") else {}
    return {"backbone": backbone.name, **extra}


def backbone_of(meta: dict[str, Any]):
    """The backbone a saved detector's metadata names (see `backbone_record`)."""
    return load_backbone(meta["backbone"], **meta.get("backbone_options", {}))
