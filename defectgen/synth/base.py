"""The contract every defect generator meets, so that all of them share one pipeline and one output format."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class DefectGenerator(Protocol):
    """Paints defects inside masks.

    name:       short id written into the COCO info block ("ddpm", "cddpm", "ldm", "draem").
    resolution: the side the model works at, or None if any size works. The pipeline generates larger images in
                a crop around the mask and pastes the result back.
    channels:   1 or 3 if the generator needs that many (a DDPM trained on gray data), else None.
    """

    name: str
    resolution: int | None
    channels: int | None

    def info(self) -> dict[str, Any]:
        """Parameters to record in annotations.json (model path, sampler, steps, strength, ...)."""
        ...

    def generate(
        self, normals: list[np.ndarray], masks: list[np.ndarray], seeds: list[int], class_names: list[str | None],
    ) -> list[np.ndarray]:
        """normals: H x W x C float32 in [0, 1]; masks: H x W bool; one seed per sample (the result for a sample
        depends only on its seed, not on the batch it is in). Returns float32 arrays of the same shapes. The
        pipeline itself restores the pixels outside each mask bit-exactly, so generators need not."""
        ...
