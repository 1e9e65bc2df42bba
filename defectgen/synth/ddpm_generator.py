"""The `DefectGenerator` for both DDPM kinds, through their one interface (`DdpmModel`, diffusion/ddpm.py):
perturb-and-denoise (ddpm) and guided inpainting (cddpm)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from defectgen.diffusion.ddpm import Sampling, load_model
from defectgen.diffusion.samplers import DEFAULT_STEPS, SAMPLERS
from defectgen.errors import DefectgenError
from defectgen.io.images import resize, to_model_size
from defectgen.runtime import pick_device
from defectgen.synth.base import Abilities


class DdpmGenerator:
    """Defects from a trained DDPM folder.

    ddpm:  strength = t0 / T (how far the normal image is diffused), sigma = std of the extra noise inside the
           mask (in units of the unit-variance diffusion noise). Larger = stronger, less normal-looking defects.
    cddpm: guidance = classifier-free guidance scale; the class comes from the pipeline (`class_name`, or drawn
           from the training distribution in `class_distribution`). strength 1 (its default) paints the mask from
           noise; below 1 it re-draws what the image holds there (SDEdit: the harmonized transplant).
    """

    def __init__(self, model: str | Path, sampler: str = "ddim", steps: int | None = None,
                 strength: float | None = None,
                 sigma: float = 1.0, guidance: float = 3.0, device: str | None = None, **_: Any):
        if sampler not in SAMPLERS:
            raise DefectgenError(None, f"unknown sampler {sampler!r}; choose from {', '.join(SAMPLERS)}")
        if sigma < 0:
            raise DefectgenError(None, f"`sigma` must be >= 0, got {sigma}")
        if steps is not None and steps < 1:
            raise DefectgenError(None, f"`steps` must be at least 1, got {steps}")
        if strength is not None and not 0 < strength <= 1:  # checked before the model is loaded
            raise DefectgenError(None, f"`strength` must lie in (0, 1], got {strength}")
        self.device = str(pick_device(device))
        self.model = load_model(model, self.device)
        strength = strength if strength is not None else self.model.default_strength
        self.path = Path(model)
        self.name = self.model.kind
        self.resolution = self.model.resolution
        self.channels = self.model.channels
        self.context = self.model.context  # the windows it was trained on (pipeline and transplant cut the same)
        self.sampler, self.steps = sampler, steps or DEFAULT_STEPS[sampler]
        self.strength, self.sigma, self.guidance = strength, sigma, guidance
        counts = self.model.meta.get("class_counts") or {}
        names = self.model.class_names
        total = sum(counts.get(c, 0) for c in names)
        self.class_distribution: dict[str, float] | None = (
            {c: counts.get(c, 0) / total for c in names} if total else
            ({c: 1 / len(names) for c in names} if names else None)
        )

    @property
    def abilities(self) -> Abilities:
        """The conditional kind paints the class it is given; the unconditional one reads neither class nor text,
        so a prompt only names its samples' class."""
        return Abilities(conditional=True) if self.model.conditional else Abilities(prompt_names_class=True)

    def sampling(self) -> Sampling:
        return Sampling(self.sampler, self.steps, self.strength, self.sigma, self.guidance)

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "model": str(self.path), "kind": self.name, "sampler": self.sampler, "steps": self.steps,
            "resolution": self.resolution, "channels": self.channels, "context": self.context,
            "model_version": self.model.meta.get("version"),
            "data_fingerprint": (self.model.meta.get("data") or {}).get("fingerprint"),
        }
        info.update(self.model.sampling_info(self.sampling()))
        return info

    def check_class(self, class_name: str | None) -> None:
        self.model.check_class(class_name)

    def _prepare(self, normals: list[np.ndarray], masks: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.resolution
        xs, ms = [], []
        for image, mask in zip(normals, masks, strict=True):
            if image.shape[2] != self.channels:
                raise ValueError(f"expected {self.channels}-channel images, got {image.shape[2]}")
            if image.shape[:2] != (r, r):  # the pipeline sends model-sized windows; the transplant sends its own
                image, mask = to_model_size(image, mask, r)
            xs.append(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))))
            ms.append(torch.from_numpy(np.ascontiguousarray(mask[None].astype(np.float32))))
        x0 = torch.stack(xs).to(self.device, torch.float32) * 2 - 1
        return x0, torch.stack(ms).to(self.device, torch.float32)

    def generate(self, normals: list[np.ndarray], masks: list[np.ndarray], seeds: list[int],
                 class_names: list[str | None]) -> list[np.ndarray]:
        if not normals:
            return []
        shapes = [im.shape for im in normals]
        x0, mask = self._prepare(normals, masks)
        out = self.model.generate(x0, mask, seeds, class_names, self.sampling())
        out = ((out.float().cpu() + 1) / 2).permute(0, 2, 3, 1).numpy()
        results = []
        for arr, shape in zip(out, shapes, strict=True):
            arr = resize(arr, shape[0], shape[1]).reshape(shape)
            results.append(np.ascontiguousarray(arr, dtype=np.float32))
        return results
