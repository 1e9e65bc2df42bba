"""Diffusion features: a defectgen DDPM run folder as the detectors' frozen backbone.

The image (in [0, 1]) is scaled to [-1, 1], noised with the run's own DDPMScheduler to each of
`timesteps` with one fixed seeded noise field, and the UNet's decoder activations are read with forward hooks:
each up-block's output before its upsampler (the decoder level at its own resolution), so the tiny preset gives
strides 4, 2, 1 and the small/base presets 8, 4, 2, 1. Several timesteps are averaged. Like `Backbone`, a
request for stride s returns a map at stride s: the decoder level with the largest stride <= s, average-pooled
by the remaining factor (a UNet has no level coarser than its bottleneck, and PatchCore wants strides 8 and 16);
a stride finer than every level gets the finest.

The maps are wide (up to 256 channels a level), so `fit_projection` fits a PCA per level on normal images and
every map is then projected to `feature_dim` channels before it reaches a memory bank; `compression` reports
the bytes per patch before and after.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from defectgen.errors import DefectgenError

DEFAULT_TIMESTEPS = (100,)
DEFAULT_FEATURE_DIM = 32
PCA_SAMPLES = 20000  # patch vectors per level the PCA is fitted on
NOISE_SEED = 0


class DiffusionBackbone(nn.Module):
    """images (B x C x H x W float in [0, 1]) -> decoder feature maps of a DDPM at the requested strides.

    Frozen and in eval mode. `in_channels` is the model's image channels (other inputs are converted as
    `Backbone` does); `name` is the run folder, so a saved detector reloads it by name."""

    def __init__(self, model, name: str, timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
                 feature_dim: int = DEFAULT_FEATURE_DIM):
        super().__init__()
        total = int(model.scheduler.config.num_train_timesteps)
        timesteps = tuple(int(t) for t in timesteps)
        if not timesteps or any(not 0 <= t < total for t in timesteps):
            raise DefectgenError(name, f"`feature_timesteps` must lie in [0, {total}) for this model, got "
                                 f"{list(timesteps)}")
        if feature_dim < 1:
            raise DefectgenError(None, f"`feature_dim` must be at least 1, got {feature_dim}")
        self.unet, self.condition, self.scheduler = model.unet, model.condition, model.scheduler
        self._ddpm = model  # (a DdpmModel, not a module: its networks are registered above)
        self.name, self.timesteps, self.feature_dim = name, timesteps, int(feature_dim)
        self.in_channels = int(model.channels)
        # the UNet halves the image once per down block but the last: sides must be multiples of this
        self.multiple = 2 ** (len(self.unet.down_blocks) - 1)
        self.register_buffer("mean", torch.full((1, 1, 1, 1), 0.5))  # x * 2 - 1 == (x - 0.5) / 0.5
        self.register_buffer("std", torch.full((1, 1, 1, 1), 0.5))
        self.projection: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per level: mean D, basis D x k
        self._captured: list[torch.Tensor] = []
        for block in self.unet.up_blocks:
            if block.upsamplers is not None:
                block.upsamplers[0].register_forward_pre_hook(self._capture_input)
            else:
                block.register_forward_hook(self._capture_output)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> DiffusionBackbone:  # noqa: ARG002 - frozen whatever the caller asks
        return super().train(False)

    def _capture_input(self, _module, args) -> None:
        self._captured.append(args[0])

    def _capture_output(self, _module, _args, output) -> None:
        self._captured.append(output)

    def options(self) -> dict[str, Any]:
        """What `load_backbone` needs besides the folder to rebuild this backbone."""
        return {"feature_timesteps": list(self.timesteps), "feature_dim": self.feature_dim}

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] != self.in_channels:
            images = images.mean(1, keepdim=True) if self.in_channels == 1 else images.expand(-1, 3, -1, -1)
        return (images - self.mean) / self.std

    def _noise(self, t: int, shape: torch.Size) -> torch.Tensor:
        """One noise field per timestep and size, shared by every image: features depend on the image alone,
        not on its batch or position in it."""
        g = torch.Generator().manual_seed(NOISE_SEED * 1000003 + t)
        return torch.randn((1, *shape[1:]), generator=g).to(self.mean.device)

    def _denoise(self, x_t: torch.Tensor, t: int) -> None:
        steps = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        self._ddpm.normal_noise_prediction(x_t, steps)  # the hooks capture the decoder levels

    @torch.no_grad()
    def levels(self, images: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        """(stride, map) for every decoder level, coarse to fine, averaged over the timesteps, unprojected."""
        h, w = images.shape[-2:]
        x0 = self._prepare(images)
        # pad bottom/right by reflection up to the UNet's multiple (replicate where the image is too small to
        # reflect), then crop each map back to the part that covers the image
        ph, pw = -h % self.multiple, -w % self.multiple
        if ph or pw:
            x0 = F.pad(x0, (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate")
        total: list[torch.Tensor] | None = None
        for t in self.timesteps:
            noisy = self.scheduler.add_noise(x0, self._noise(t, x0.shape).expand_as(x0),
                                             torch.tensor([t], device=x0.device))
            self._captured = []
            self._denoise(noisy, t)
            maps, self._captured = self._captured, []
            total = maps if total is None else [a + m for a, m in zip(total, maps, strict=True)]
        out = []
        for m in total:
            stride = x0.shape[-2] // m.shape[-2]
            out.append((stride, m[..., : -(-h // stride), : -(-w // stride)] / len(self.timesteps)))
        return out

    def _project(self, level: int, m: torch.Tensor) -> torch.Tensor:
        if self.projection is None:
            return m
        mu, basis = self.projection[level]
        return torch.einsum("bdhw,dk->bkhw", m - mu.view(1, -1, 1, 1), basis)

    def forward(self, images: torch.Tensor, strides: Sequence[int] = (8, 16)) -> list[torch.Tensor]:
        levels = self.levels(images)
        out = []
        for s in strides:
            at_most = [i for i, (have, _) in enumerate(levels) if have <= s]
            i = at_most[0] if at_most else len(levels) - 1  # levels run coarse to fine
            have, m = levels[i]
            m = self._project(i, m)
            if s > have and s % have == 0:
                m = F.avg_pool2d(m, s // have, ceil_mode=True)
            out.append(m)
        return out

    def channels(self, strides: Sequence[int], size: int = 64) -> list[int]:
        with torch.no_grad():
            maps = self.forward(torch.zeros(1, self.in_channels, size, size, device=self.mean.device), strides)
        return [int(m.shape[1]) for m in maps]

    @torch.no_grad()
    def fit_projection(self, images: Sequence[np.ndarray] | np.ndarray, batch_size: int = 8,
                       seed: int = 0) -> DiffusionBackbone:
        """PCA per decoder level on (up to PCA_SAMPLES) random patch vectors of `images` (normals): each level
        is then projected to its top `feature_dim` components (all of them when it has fewer channels)."""
        from defectgen.detect.features import batches, to_tensor

        g = torch.Generator().manual_seed(int(seed))
        per_image = max(1, PCA_SAMPLES // max(1, len(images)))
        samples: list[list[torch.Tensor]] | None = None
        for sl in batches(len(images), batch_size):
            levels = self.levels(to_tensor(images[sl], self.mean.device))
            if samples is None:
                samples = [[] for _ in levels]
            for store, (_, m) in zip(samples, levels, strict=True):
                flat = m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, m.shape[1])
                pick = torch.randint(flat.shape[1], (m.shape[0], min(per_image, flat.shape[1])), generator=g)
                store.append(torch.gather(flat, 1, pick.to(flat.device)[..., None].expand(-1, -1, m.shape[1]))
                             .reshape(-1, m.shape[1]))
        self.projection = [_pca(torch.cat(store).float(), self.feature_dim) for store in samples or []]
        return self

    def projection_state(self) -> dict[str, torch.Tensor]:
        """The fitted PCA as named tensors, for a detector to save beside its banks."""
        out = {}
        for i, (mu, basis) in enumerate(self.projection or []):
            out[f"projection.{i}.mean"], out[f"projection.{i}.basis"] = mu.contiguous(), basis.contiguous()
        return out

    def load_projection_state(self, tensors: dict[str, torch.Tensor]) -> None:
        n = sum(1 for k in tensors if k.startswith("projection.") and k.endswith(".mean"))
        dev = self.mean.device
        self.projection = [(tensors[f"projection.{i}.mean"].to(dev), tensors[f"projection.{i}.basis"].to(dev))
                           for i in range(n)] or None

    def compression(self, strides: Sequence[int]) -> dict[str, Any]:
        """Channels and float32 bytes per patch (`patch_features` of `strides`) before and after the PCA."""
        fitted, self.projection = self.projection, None
        try:
            raw = self.channels(strides)
        finally:
            self.projection = fitted
        kept = self.channels(strides)
        return {"feature_dim": self.feature_dim, "projected": fitted is not None, "channels_raw": sum(raw),
                "channels": sum(kept), "bytes_per_patch_raw": 4 * sum(raw), "bytes_per_patch": 4 * sum(kept),
                "feature_timesteps": list(self.timesteps)}


def _pca(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean D, basis D x min(k, D)): the top principal directions of the rows of x."""
    mu = x.mean(0)
    k = min(k, x.shape[1])
    _, _, vh = torch.linalg.svd(x - mu, full_matrices=False)
    return mu, vh[:k].T.contiguous()


def load_diffusion_backbone(folder: str | Path, meta: dict[str, Any], device: str | torch.device = "cpu",
                            timesteps: Sequence[int] | None = None,
                            feature_dim: int | None = None) -> DiffusionBackbone:
    """A DiffusionBackbone from a defectgen DDPM run folder whose defectgen.json is `meta`."""
    from defectgen.diffusion.ddpm import KINDS, load_model

    if meta.get("kind") not in KINDS:
        raise DefectgenError(folder, f"not a DDPM run (defectgen.json kind {meta.get('kind')!r}); diffusion "
                             f"features need a {' or '.join(KINDS)} folder")
    model = load_model(folder, device)
    return DiffusionBackbone(model, str(folder), timesteps or DEFAULT_TIMESTEPS,
                             feature_dim or DEFAULT_FEATURE_DIM).to(device)
