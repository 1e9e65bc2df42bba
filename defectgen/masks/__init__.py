"""Where defects go: every mask source is a `MaskSource` (masks/source.py): Perlin masks, box masks and shapes
from a folder (`MaskGenerator`, here; presets in the top-level masks/ folder, packaged as defectgen/data/masks/), a
folder of masks used as they are (masks/folder.py), the masks of real labeled defects (masks/real.py);
`resolve_masks` is the one way from a verb's mask options to a source.

Every random draw comes from `mask_rng(seed, index)`, so mask i depends only on (seed, i): the same seed gives
the same masks whatever the batch size or resume point.
"""

from __future__ import annotations

from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from defectgen.errors import DefectgenError
from defectgen.io.sample import Box, Sample
from defectgen.masks.bbox import BoxConfig, box_mask, box_stats_from
from defectgen.masks.folder import MaskFolder
from defectgen.masks.perlin import PerlinConfig, perlin_mask
from defectgen.masks.placement import estimate_foreground, mask_rng, on_foreground
from defectgen.masks.shapes import ShapeBank
from defectgen.masks.source import MaskSource, with_box

KINDS = ("perlin", "bbox")
# The top-level masks/ through the link defectgen/data/masks (a copy in a wheel): editable installs and wheels both
# carry the presets.
PRESET_DIR = resources.files("defectgen") / "data" / "masks"

__all__ = [
    "KINDS", "BoxConfig", "MaskFolder", "MaskGenerator", "MaskSource", "PerlinConfig", "ShapeBank", "box_mask",
    "box_stats_from", "estimate_foreground", "load_preset", "mask_rng", "on_foreground", "perlin_mask",
    "resolve_masks",
]


def load_preset(name_or_path: str) -> tuple[str, dict[str, Any]]:
    """A YAML preset, by name (a file in the top-level masks/, packaged as defectgen/data/masks/) or path: returns
    (kind, config fields)."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        names = [p.name for p in PRESET_DIR.iterdir()] if PRESET_DIR.is_dir() else []
        known = sorted(n[: -len(".yaml")] for n in names if n.endswith(".yaml"))
        raise DefectgenError(path, f"mask preset not found (known presets: {', '.join(known) or 'none'})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise DefectgenError(path, f"not valid YAML ({str(e).splitlines()[0]})") from None
    kind = data.pop("kind", None)
    if kind not in KINDS:
        raise DefectgenError(path, f"preset needs 'kind: perlin' or 'kind: bbox', got {kind!r}")
    data.pop("description", None)
    return kind, data


def _config(kind: str, values: dict[str, Any]):
    cls = PerlinConfig if kind == "perlin" else BoxConfig
    allowed = {f.name for f in fields(cls)}
    unknown = set(values) - allowed
    if unknown:
        raise DefectgenError(None, f"unknown {kind} mask option(s): {', '.join(sorted(unknown))}")
    tupled = {k: tuple(v) if isinstance(v, list) and k != "stats" else v for k, v in values.items()}
    try:
        return cls(**tupled)
    except (TypeError, ValueError) as e:
        raise DefectgenError(None, f"bad {kind} mask option: {e}") from None


class MaskGenerator:
    """A `MaskSource` that draws mask i for an image of a given size: `gen(i, h, w, foreground=None) -> (mask,
    boxes)`; in a synthesis run, at the size of sample i's normal image."""

    folder = None  # nothing read that an output could overwrite

    def __init__(self, kind: str, seed: int = 0, preset: str | None = None, shapes: str | Path | None = None,
                 **options: Any):
        if shapes is None and kind not in KINDS:
            raise DefectgenError(None, f"unknown mask kind {kind!r}; choose from {', '.join(KINDS)}")
        values: dict[str, Any] = {}
        if preset:
            preset_kind, values = load_preset(preset)
            if preset_kind != kind:
                raise DefectgenError(preset, f"preset is for '{preset_kind}' masks, not '{kind}'")
        values.update({k: v for k, v in options.items() if v is not None})
        self.kind = "shapes" if shapes is not None else kind
        self.seed = int(seed)
        self.bank = ShapeBank(shapes) if shapes is not None else None
        self.config = None if shapes is not None else _config(kind, values)

    def describe(self) -> dict[str, Any]:
        if self.config is None:
            return {"kind": self.kind, "seed": self.seed}
        cfg = {f.name: getattr(self.config, f.name) for f in fields(self.config) if f.name != "stats"}
        if isinstance(self.config, BoxConfig) and self.config.stats:
            cfg["stats_from_labeled_boxes"] = len(self.config.stats)
        return {"kind": self.kind, "seed": self.seed, **cfg}

    def __call__(self, index: int, height: int, width: int, foreground: np.ndarray | None = None,
                 label: str | None = None) -> tuple[np.ndarray, list[Box]]:
        rng = mask_rng(self.seed, index)
        if self.bank is not None:
            mask = self.bank.sample(height, width, rng, foreground=foreground)
        elif self.kind == "perlin":
            mask = perlin_mask(height, width, rng, self.config, foreground)
        else:
            return box_mask(height, width, rng, self.config, foreground, label)
        return with_box(mask, label)

    def mask_for(self, index: int, sample: Sample) -> tuple[np.ndarray, list[Box]]:
        return self(index, sample.height, sample.width, label=sample.class_name)


def resolve_masks(masks: str | Path | MaskSource = "perlin", *, seed: int = 0, preset: str | None = None,
                  masks_from: str | Path | None = None, drawn_only: bool = False, **shaping: Any) -> MaskSource:
    """The mask source a verb's options name, the one way every verb gets one.

    masks: perlin or bbox (drawn per sample from (seed, i), from a `preset` and `shaping`), a folder of mask
    images (`MaskFolder`), or a `MaskSource` (returned as it is). masks_from: instead, the masks of the real
    defects in this labeled set (`RealMasks`). drawn_only: perlin or bbox only (`defectgen masks`). shaping:
    min_area, max_area and threshold shape Perlin masks; shape and the box sizes of the labeled set `like_labeled`
    (read in layout `fmt`) shape box masks; None: the preset's value."""
    if masks_from is not None:
        if preset:
            raise DefectgenError(None, "`mask_preset` applies to `masks` perlin or bbox, not to `masks_from`")
        from defectgen.masks.real import RealMasks

        return RealMasks(masks_from, seed=seed)
    if not isinstance(masks, (str, Path)):
        return masks
    if str(masks) in KINDS or drawn_only:
        return _drawn(str(masks), seed, preset, **shaping)
    if preset:
        raise DefectgenError(None, "`mask_preset` applies to perlin or bbox masks, not to a mask folder")
    return MaskFolder(masks)


def _drawn(kind: str, seed: int, preset: str | None, shape: str | None = None, min_area: float | None = None,
           max_area: float | None = None, threshold: float | None = None, like_labeled: str | Path | None = None,
           fmt: str = "auto") -> MaskGenerator:
    """Perlin or box masks, each shaped by the options of its kind (the others are not used)."""
    options: dict[str, Any] = {"min_area": min_area, "max_area": max_area, "threshold": threshold} \
        if kind == "perlin" else {}
    if kind == "bbox":
        options["shape"] = shape
        if like_labeled is not None:
            from defectgen.io import open_dataset

            stats = box_stats_from(open_dataset(like_labeled, fmt).select(normal=False))
            if not stats:
                raise DefectgenError(like_labeled, "no boxes or masks found to take sizes from")
            options["stats"] = stats
    return MaskGenerator(kind, seed=seed, preset=preset, **options)
