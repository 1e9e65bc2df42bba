"""Filters over a synthesized set.

- `change`: rejects a sample whose masked region barely differs from the normal image it was painted on (a silent
  no-op inpaint is the classic bug of this kind of tool).
- `clip`: DSYM's CLIP-guided noise filter. The padded crop around the mask is scored by CLIP against
  "a photo with {defect} defect" and "a photo of a normal {material} surface"; the score is the softmax
  probability of the defect text. Sample t of T is kept when the score exceeds tau_t = tau_0 * exp(-lambda * t / T).

`filter_output` applies them to an output folder: rejected samples move to OUT/rejected/ with their scores, kept
ones are renumbered so ids stay contiguous, annotations.json is rewritten (its info block records the filters
and how many each removed) and the contact sheet is drawn again from the kept samples.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from defectgen.errors import DefectgenError
from defectgen.io.coco import CocoBuilder, load_coco_json
from defectgen.io.files import atomic_write_json, resolve_inside
from defectgen.io.images import padded_crop, read_image, read_mask, to_float, to_uint8
from defectgen.io.sample import Sample

FILTERS = ("change", "clip")


class ChangeFilter:
    """Mean absolute change inside the mask, in [0, 1] intensity units; keep when >= min_change."""

    name = "change"

    def __init__(self, min_change: float = 0.02):
        self.min_change = float(min_change)

    def params(self) -> dict[str, Any]:
        return {"min_change": self.min_change}

    def score(self, generated: np.ndarray, normal: np.ndarray, mask: np.ndarray, **_: Any) -> float:
        if not mask.any():
            return 0.0
        diff = np.abs(to_float(generated) - to_float(normal))
        return float(diff[mask].mean())

    def keep(self, score: float, index: int, total: int) -> bool:
        return score >= self.min_change


class ClipFilter:
    """CLIP from a folder or hub id (CLIPModel + its processor); local folders never touch the network."""

    name = "clip"

    def __init__(self, model: str | Path, tau0: float = 0.5, lam: float = 1.0, material: str | None = None,
                 pad: float = 0.5, device: str | None = None):
        from transformers import CLIPModel, CLIPProcessor

        local = Path(model).exists()
        try:
            self.model = CLIPModel.from_pretrained(str(model), local_files_only=local).eval()
            self.processor = CLIPProcessor.from_pretrained(str(model), local_files_only=local)
        except (OSError, ValueError, TypeError) as e:
            raise DefectgenError(model, f"cannot load a CLIP model and processor ({str(e).splitlines()[0][:160]})") \
                from None
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.model_name = str(model)
        self.tau0, self.lam, self.pad = float(tau0), float(lam), float(pad)
        self.material = material
        self._text_cache: dict[str, torch.Tensor] = {}

    def params(self) -> dict[str, Any]:
        return {"model": self.model_name, "tau0": self.tau0, "lambda": self.lam, "material": self.material,
                "pad": self.pad}

    def threshold(self, index: int, total: int) -> float:
        return self.tau0 * math.exp(-self.lam * index / max(total, 1))

    @torch.no_grad()
    def _text(self, text: str) -> torch.Tensor:
        if text not in self._text_cache:
            inputs = self.processor(text=[text], return_tensors="pt", padding=True).to(self.device)
            emb = self.model.get_text_features(**inputs)
            emb = emb if isinstance(emb, torch.Tensor) else emb.pooler_output
            self._text_cache[text] = torch.nn.functional.normalize(emb, dim=-1)[0]
        return self._text_cache[text]

    @torch.no_grad()
    def score(self, generated: np.ndarray, mask: np.ndarray, class_name: str | None = None, **_: Any) -> float:
        crop = to_uint8(padded_crop(generated, mask, self.pad))
        if crop.shape[2] == 1:
            crop = np.repeat(crop, 3, axis=2)
        pixels = self.processor(images=[crop], return_tensors="pt")["pixel_values"].to(self.device)
        image = self.model.get_image_features(pixel_values=pixels)
        image = image if isinstance(image, torch.Tensor) else image.pooler_output
        image = torch.nn.functional.normalize(image, dim=-1)[0]
        defect = (class_name or "a").replace("_", " ")
        surface = f"normal {self.material} surface" if self.material else "normal surface"
        texts = torch.stack([self._text(f"a photo with {defect} defect"), self._text(f"a photo of a {surface}")])
        logits = self.model.logit_scale.exp() * texts @ image
        return float(torch.softmax(logits, dim=0)[0])

    def keep(self, score: float, index: int, total: int) -> bool:
        return score > self.threshold(index, total)


@dataclass
class FilterSummary:
    total: int
    kept: int
    removed: dict[str, int] = field(default_factory=dict)


def make_filters(names: list[str], *, clip_model: str | None = None, tau0: float = 0.5, lam: float = 1.0,
                 min_change: float = 0.02, material: str | None = None) -> list:
    filters = []
    for name in names:
        if name == "change":
            filters.append(ChangeFilter(min_change))
        elif name == "clip":
            if not clip_model:
                raise DefectgenError(None, "the clip filter needs `clip_model` (a CLIP folder or hub id)")
            filters.append(ClipFilter(clip_model, tau0, lam, material))
        else:
            raise DefectgenError(None, f"unknown filter {name!r}; choose from {', '.join(FILTERS)}")
    return filters


@dataclass
class _Entry:
    """One sample of the set being filtered: its COCO image entry, its files, its class, and its fate."""

    image: dict[str, Any]
    path: Path
    mask_path: Path
    class_name: str | None
    annotated: bool
    scores: dict[str, float] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)


def filter_output(out: str | Path, filters: list, log=print, allow_empty: bool = False) -> FilterSummary:
    """Score every sample of `out` with every filter; move rejected ones to out/rejected, renumber the rest,
    rewrite annotations.json (under the one COCO rule) and redraw the contact sheet from the kept samples. Filters
    that would reject every sample are an error, with nothing moved, unless `allow_empty`."""
    out = Path(out)
    ann_path = out / "annotations.json"
    data = load_coco_json(ann_path)
    categories = {c["id"]: c["name"] for c in data["categories"]}
    entries = _entries(out, data, ann_path, categories)  # every path checked before any file is touched
    coco = CocoBuilder([categories[k] for k in sorted(categories)], root=out)
    kept: list[_Entry] = []
    for t, entry in enumerate(entries):
        sample = _score(entry, filters, t, len(entries), ann_path)
        if not entry.failed:
            new_index = len(kept)
            kept.append(entry)
            sample.path = out / "images" / f"{new_index:06d}.png"
            sample.mask_path = out / "masks" / f"{new_index:06d}.png"
            extra = {k: v for k, v in entry.image.items() if k not in _REWRITTEN}
            coco.add(sample, image_id=new_index + 1, filter_scores=entry.scores, **extra)
    if entries and not kept and not allow_empty:  # decided before any file moves: the set stays as it was
        raise DefectgenError(out, f"the filters reject all {len(entries)} samples ("
                             + ", ".join(f"{f.name}: {f.params()}" for f in filters) + "); nothing was changed: "
                             "loosen the filters or pass `allow_empty`")
    rejected_dir = resolve_inside(out, "rejected", what="folder")
    rejected_records = _move_rejected(out, [e for e in entries if e.failed], rejected_dir)
    _renumber(out, [(e.path, e.mask_path) for e in kept])
    removed = {f.name: sum(1 for e in entries if f.name in e.failed) for f in filters}
    info = dict(data.get("info", {}))
    info["defectgen"] = {**info.get("defectgen", {}), "filters": {
        f.name: {**f.params(), "removed": removed[f.name]} for f in filters}, "kept": len(kept),
        "generated": len(entries)}
    if rejected_records:
        previous = rejected_dir / "scores.json"
        earlier = json.loads(previous.read_text(encoding="utf-8")) if previous.is_file() else []
        atomic_write_json(previous, (earlier if isinstance(earlier, list) else []) + rejected_records)
    atomic_write_json(ann_path, {**coco.to_dict(info), "info": info})
    if (out / "contact_sheet.png").is_file():  # it showed the removed samples too: drawn again from the kept ones
        from defectgen.synth.pipeline import write_contact_sheet

        write_contact_sheet(out, [(out / im["file_name"], out / im["mask_file"], e.class_name,
                                   Path(e.image["source"]) if e.image.get("source") else None)
                                  for im, e in zip(coco.images, kept, strict=True)],
                            empty_note=f"the filters kept 0 of {len(entries)} samples")
    log(f"filters kept {len(kept)} of {len(entries)} samples; removed " +
        ", ".join(f"{k}: {v}" for k, v in removed.items()) + (f"; rejected samples in {rejected_dir}" if
                                                              rejected_records else ""))
    return FilterSummary(len(entries), len(kept), removed)


# what filter_output writes anew for each kept image; the rest of its entry (source, seed, ...) is kept
_REWRITTEN = ("id", "file_name", "height", "width", "mask_file", "source", "seed", "filter_scores")


def _entries(out: Path, data: dict[str, Any], ann_path: Path, categories: dict[int, str]) -> list[_Entry]:
    """The set's samples in image-id order, each with its files (required to lie inside the set) and class."""
    classes: dict[int, str] = {}
    for a in data["annotations"]:
        classes.setdefault(a["image_id"], categories[a["category_id"]])
    checked = sorted(((im, _sample_paths(out, im, ann_path)) for im in data["images"]), key=lambda p: p[0]["id"])
    named = [p.resolve() for _, pair in checked for p in pair]
    if len(set(named)) != len(named):
        raise DefectgenError(ann_path, "two image entries name the same image or mask file")
    return [_Entry(im, image_path, mask_path, classes.get(im["id"]), im["id"] in classes)
            for im, (image_path, mask_path) in checked]


def _score(entry: _Entry, filters: list, t: int, total: int, ann_path: Path) -> Sample:
    """Score sample t of `total` with every filter, recording the scores and the filters it fails; returns it as a
    `Sample` (the mask counts as a defect only where the set annotated one)."""
    im = entry.image
    generated = read_image(entry.path)
    mask = read_mask(entry.mask_path, generated.shape[:2], entry.path)
    normal = None
    if any(f.name == "change" for f in filters):
        source = im.get("source")
        if not source:
            raise DefectgenError(ann_path, f"image {im['file_name']} records no 'source' normal image; "
                                 "the change filter needs it")
        normal = read_image(source)
        if normal.shape != generated.shape:
            raise DefectgenError(source, f"normal image is {normal.shape}, generated {im['file_name']} is "
                                 f"{generated.shape}")
    for f in filters:
        s = f.score(generated=generated, normal=normal, mask=mask, class_name=entry.class_name)
        entry.scores[f.name] = round(s, 6)
        if not f.keep(s, t, total):
            entry.failed.append(f.name)
    source, seed = im.get("source"), im.get("seed")
    return Sample(generated, mask if entry.annotated else None, entry.class_name,
                  source=Path(source) if source else None, seed=seed if isinstance(seed, int) else None)


def _move_rejected(out: Path, rejected: list[_Entry], rejected_dir: Path) -> list[dict[str, Any]]:
    """Move the rejected samples' files to out/rejected (an earlier filter run's rejects stay); their records."""
    records = []
    for e in rejected:
        moved = {}
        for src, sub in ((e.path, "images"), (e.mask_path, "masks")):
            dest = _free_name(rejected_dir / sub / src.name)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
            moved[sub] = str(dest.relative_to(out))
        records.append({"file_name": e.image["file_name"], "id": e.image["id"], "scores": e.scores,
                        "failed": e.failed, "source": e.image.get("source"), "moved_to": moved})
    return records


def _renumber(out: Path, kept: list[tuple[Path, Path]]) -> None:
    """Rename the kept samples' files to 000000.. in two passes (through temporary names), so that no rename can
    land on a file that another kept sample still needs."""
    staged = []
    for new_index, sources in enumerate(kept):
        for src, sub in zip(sources, ("images", "masks"), strict=True):
            final = out / sub / f"{new_index:06d}.png"
            if src != final:
                tmp = out / sub / f".{new_index:06d}.filter-{os.getpid()}.png"
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, tmp)
                staged.append((tmp, final))
    for tmp, final in staged:
        os.replace(tmp, final)


def _sample_paths(out: Path, im: Any, ann_path: Path) -> tuple[Path, Path]:
    """The image and mask of one COCO image entry, both required to lie inside the set."""
    if not isinstance(im, dict) or not isinstance(im.get("file_name"), str) or not isinstance(im.get("id"), int):
        raise DefectgenError(ann_path, f"image entry {str(im)[:80]} has no 'id' and 'file_name'")
    name = im["file_name"]
    mask_name = im.get("mask_file", name.replace("images/", "masks/", 1))
    if not isinstance(mask_name, str) or mask_name == name:
        raise DefectgenError(ann_path, f"image {name!r} has no separate mask file")
    return (resolve_inside(out, name, source=ann_path, what="file_name"),
            resolve_inside(out, mask_name, source=ann_path, what="mask_file"))


def _free_name(path: Path) -> Path:
    """`path`, or path with -1, -2, ... before the suffix if that name is taken."""
    k, candidate = 0, path
    while candidate.exists() or candidate.is_symlink():
        k += 1
        candidate = path.with_name(f"{path.stem}-{k}{path.suffix}")
    return candidate


def scores_of(out: str | Path) -> list[dict[str, Any]]:
    """The kept samples' filter scores, in id order (for reports)."""
    data = json.loads((Path(out) / "annotations.json").read_text())
    return [im.get("filter_scores", {}) for im in sorted(data["images"], key=lambda im: im["id"])]
