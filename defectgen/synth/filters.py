"""Filters over a synthesized set (method 4 of DESIGN.md).

- `change`: rejects a sample whose masked region barely differs from the normal image it was painted on (a silent
  no-op inpaint is the classic bug of this kind of tool).
- `clip`: DSYM's CLIP-guided noise filter. The padded crop around the mask is scored by CLIP against
  "a photo with {defect} defect" and "a photo of a normal {material} surface"; the score is the softmax
  probability of the defect text. Sample t of T is kept when the score exceeds tau_t = tau_0 * exp(-lambda * t / T).

`filter_output` applies them to an output folder: rejected samples move to OUT/rejected/ with their scores, kept
ones are renumbered so ids stay contiguous, and annotations.json is rewritten (its info block records the filters
and how many each removed).
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
from defectgen.io.images import read_image, read_mask, to_float, to_uint8
from defectgen.io.output import atomic_write_json, resolve_inside
from defectgen.io.sample import Box

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


def padded_crop(image: np.ndarray, mask: np.ndarray, pad: float = 0.5, min_side: int = 32) -> np.ndarray:
    """The mask's extent grown by `pad` of its size on each side (at least min_side), clipped to the image."""
    box = Box.from_mask(mask)
    h, w = mask.shape
    if box is None:
        return image
    side_y = max(box.height * (1 + 2 * pad), min_side)
    side_x = max(box.width * (1 + 2 * pad), min_side)
    cy, cx = (box.y0 + box.y1) / 2, (box.x0 + box.x1) / 2
    y0, y1 = int(max(0, cy - side_y / 2)), int(min(h, math.ceil(cy + side_y / 2)))
    x0, x1 = int(max(0, cx - side_x / 2)), int(min(w, math.ceil(cx + side_x / 2)))
    return image[y0:y1, x0:x1]


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
                raise DefectgenError(None, "the clip filter needs --clip-model (a CLIP folder or hub id)")
            filters.append(ClipFilter(clip_model, tau0, lam, material))
        else:
            raise DefectgenError(None, f"unknown filter {name!r}; choose from {', '.join(FILTERS)}")
    return filters


def filter_output(out: str | Path, filters: list, log=print) -> FilterSummary:
    """Score every sample of `out` with every filter; move rejected ones to out/rejected and renumber the rest."""
    out = Path(out)
    ann_path = out / "annotations.json"
    data = load_coco_json(ann_path)
    categories = {c["id"]: c["name"] for c in data["categories"]}
    anns_by_image: dict[int, list[dict]] = {}
    for a in data["annotations"]:
        anns_by_image.setdefault(a["image_id"], []).append(a)
    # Every file this verb moves must lie inside the set: check them all before touching any.
    checked = sorted(((im, _sample_paths(out, im, ann_path)) for im in data["images"]), key=lambda p: p[0]["id"])
    images, paths = [im for im, _ in checked], [p for _, p in checked]
    total = len(images)
    named = [p.resolve() for pair in paths for p in pair]
    if len(set(named)) != len(named):
        raise DefectgenError(ann_path, "two image entries name the same image or mask file")
    decisions = []
    for t, (im, (image_path, mask_path)) in enumerate(zip(images, paths, strict=True)):
        generated = read_image(image_path)
        mask = read_mask(mask_path, generated.shape[:2], image_path)
        anns = anns_by_image.get(im["id"], [])
        class_name = categories[anns[0]["category_id"]] if anns else None
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
        scores, failed = {}, []
        for f in filters:
            s = f.score(generated=generated, normal=normal, mask=mask, class_name=class_name)
            scores[f.name] = round(s, 6)
            if not f.keep(s, t, total):
                failed.append(f.name)
        decisions.append((im, mask_path, scores, failed))

    rejected_dir = resolve_inside(out, "rejected", what="folder")
    kept = [d for d in decisions if not d[3]]
    coco = CocoBuilder([categories[k] for k in sorted(categories)])
    rejected_records = []
    for (im, mask_path, scores, failed), (image_path, _) in zip(decisions, paths, strict=True):
        if failed:
            moved = {}
            for src, sub in ((image_path, "images"), (mask_path, "masks")):
                dest = _free_name(rejected_dir / sub / src.name)  # an earlier filter run's rejects stay
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dest)
                moved[sub] = str(dest.relative_to(out))
            rejected_records.append({"file_name": im["file_name"], "id": im["id"], "scores": scores,
                                     "failed": failed, "source": im.get("source"), "moved_to": moved})
    # Renumber the kept samples in two passes (through temporary names), so that no rename can land on a file
    # that another kept sample still needs.
    staged = []
    kept_paths = [p for d, p in zip(decisions, paths, strict=True) if not d[3]]
    for new_index, sources in enumerate(kept_paths):
        pair = []
        for src, sub in zip(sources, ("images", "masks"), strict=True):
            final = out / sub / f"{new_index:06d}.png"
            if src != final:
                tmp = out / sub / f".{new_index:06d}.filter-{os.getpid()}.png"
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, tmp)
                pair.append((tmp, final))
        staged.append(pair)
    for pair in staged:
        for tmp, final in pair:
            os.replace(tmp, final)
    for new_index, (im, _, scores, _) in enumerate(kept):
        new_image = f"images/{new_index:06d}.png"
        new_mask = f"masks/{new_index:06d}.png"
        extra = {k: v for k, v in im.items() if k not in ("id", "file_name", "height", "width", "mask_file")}
        image_id = coco.add_image(new_image, im["height"], im["width"], image_id=new_index + 1, mask_file=new_mask,
                                  filter_scores=scores, **extra)
        for a in anns_by_image.get(im["id"], []):
            coco.annotations.append({**a, "id": len(coco.annotations) + 1, "image_id": image_id})
    removed = {f.name: sum(1 for d in decisions if f.name in d[3]) for f in filters}
    info = dict(data.get("info", {}))
    info.setdefault("defectgen", {})
    info["defectgen"] = {**info["defectgen"], "filters": {
        f.name: {**f.params(), "removed": removed[f.name]} for f in filters}, "kept": len(kept), "generated": total}
    if rejected_records:
        previous = rejected_dir / "scores.json"
        earlier = json.loads(previous.read_text(encoding="utf-8")) if previous.is_file() else []
        atomic_write_json(previous, (earlier if isinstance(earlier, list) else []) + rejected_records)
    atomic_write_json(ann_path, {**coco.to_dict(info), "info": info})
    summary = FilterSummary(total, len(kept), removed)
    log(f"filters kept {len(kept)} of {total} samples; removed " +
        ", ".join(f"{k}: {v}" for k, v in removed.items()) + (f"; rejected samples in {rejected_dir}" if
                                                              rejected_records else ""))
    return summary


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
