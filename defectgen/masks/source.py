"""The contract every mask source meets, so the synthesis pipeline asks each one the same way where sample i's
defect goes: Perlin and box masks and shapes from a folder (`MaskGenerator`, masks/__init__.py), a folder of mask
images used as they are (`MaskFolder`, masks/folder.py), the masks of real labeled defects (`RealMasks`,
masks/real.py), and a generator that pastes real defects and so makes its own masks (copypaste and the transplant,
synth/copypaste.py and synth/transplant.py). `resolve_masks` (masks/__init__.py) turns a verb's mask options into
one."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from defectgen.io.sample import Box, Sample


@runtime_checkable
class MaskSource(Protocol):
    """Where the defect of sample `index` goes.

    folder: the folder the source reads its masks from, if any (an output folder may never be it).
    """

    folder: Path | None

    def describe(self) -> dict[str, Any]:
        """The source's record in the run's settings and annotations.json (kind, seed, options)."""
        ...

    def mask_for(self, index: int, sample: Sample) -> tuple[np.ndarray, list[Box]]:
        """The H x W bool mask of sample `index` and its boxes (labelled with the sample's class). `sample` is the
        output sample still holding its normal image, with its class, seed and source path; the mask depends only
        on the source's seed, `index` and that sample."""
        ...


def with_box(mask: np.ndarray, label: str | None) -> tuple[np.ndarray, list[Box]]:
    """A mask and the one box around it (none for an empty mask)."""
    box = Box.from_mask(mask, label)
    return mask, [box] if box else []
