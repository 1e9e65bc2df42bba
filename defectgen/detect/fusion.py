"""Several frozen backbones as one (`--backbone A+B`, e.g. a transformers model and a DDPM run folder): at each
requested stride, the parts' maps side by side, each resized to the first part's map size. What a detector asks of
a diffusion part (PCA fitting, its saved projection, its options, the memory it saves) is passed on to it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SEPARATOR = "+"  # `A+B`: backbones fused side by side


class FusedBackbone(nn.Module):
    """parts: loaded backbones (`Backbone`, `DiffusionBackbone`); `name` joins theirs with '+', so a saved detector
    reloads the same fusion by name."""

    def __init__(self, parts: Sequence[nn.Module]):
        super().__init__()
        self.parts = nn.ModuleList(parts)
        self.name = SEPARATOR.join(p.name for p in parts)
        self.in_channels = max(int(p.in_channels) for p in parts)  # each part converts channels itself
        self.register_buffer("mean", torch.zeros(1, 1, 1, 1, device=parts[0].mean.device))  # where it runs
        self.eval()

    def train(self, mode: bool = True) -> FusedBackbone:  # noqa: ARG002 - frozen whatever the caller asks
        return super().train(False)

    def forward(self, images: torch.Tensor, strides: Sequence[int] = (8, 16)) -> list[torch.Tensor]:
        per_part = [p(images, strides) for p in self.parts]
        out = []
        for maps in zip(*per_part, strict=True):
            size = maps[0].shape[-2:]
            out.append(torch.cat([m if m.shape[-2:] == size else
                                  F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps], 1))
        return out

    def channels(self, strides: Sequence[int], size: int = 64) -> list[int]:
        per_part = [p.channels(strides, size) for p in self.parts]
        return [sum(c) for c in zip(*per_part, strict=True)]

    def _with(self, method: str) -> list[tuple[int, nn.Module]]:
        return [(i, p) for i, p in enumerate(self.parts) if hasattr(p, method)]

    def options(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for _, p in self._with("options"):
            out.update(p.options())
        return out

    def fit_projection(self, images: Sequence[np.ndarray] | np.ndarray, batch_size: int = 8,
                       seed: int = 0) -> FusedBackbone:
        for _, p in self._with("fit_projection"):
            p.fit_projection(images, batch_size, seed)
        return self

    def projection_state(self) -> dict[str, torch.Tensor]:
        return {f"part{i}.{k}": v for i, p in self._with("projection_state") for k, v in p.projection_state().items()}

    def load_projection_state(self, tensors: dict[str, torch.Tensor]) -> None:
        for i, p in self._with("load_projection_state"):
            prefix = f"part{i}."
            p.load_projection_state({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})

    def compression(self, strides: Sequence[int]) -> dict[str, Any]:
        """The diffusion parts' `compression`, with the other parts' channels added to both sides."""
        out: dict[str, Any] = {"channels_raw": 0, "channels": 0}
        for p in self.parts:
            if hasattr(p, "compression"):
                c = p.compression(strides)
                out.update({k: v for k, v in c.items() if k not in out})
                out["channels_raw"] += c["channels_raw"]
                out["channels"] += c["channels"]
            else:
                n = sum(p.channels(strides))
                out["channels_raw"] += n
                out["channels"] += n
        out["bytes_per_patch_raw"], out["bytes_per_patch"] = 4 * out["channels_raw"], 4 * out["channels"]
        return out
