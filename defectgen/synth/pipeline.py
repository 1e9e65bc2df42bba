"""normals x masks x generator -> an output folder with exact annotations (the data contract of DESIGN.md).

    out/images/000000.png   the normal image with a defect painted inside the mask (same size, channels, bit depth)
    out/masks/000000.png    the mask, 0/255
    out/annotations.json    COCO: one annotation per connected mask region; info.defectgen records the run
    out/contact_sheet.png   the first samples with mask outlines

Generic over `DefectGenerator`: any generator (DDPM, conditional DDPM, LDM, DRAEM) plugs in through
`load_generator`. Sample i takes its seed, its normal image, its class and its mask from (seed, i) alone, so a
resumed or re-batched run makes the same files. The pipeline composites in the normal image's own dtype, so
pixels outside the mask are bit-exact copies of the normal image whatever the generator returns.
"""

from __future__ import annotations

import importlib
import json
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from defectgen.diffusion.training import mask_window, match_channels
from defectgen.errors import DefectgenError
from defectgen.io.coco import CocoBuilder
from defectgen.io.datasets import Dataset, open_dataset
from defectgen.io.images import from_float, is_image_file, read_image, read_mask, to_float, write_image, write_mask
from defectgen.io.output import OutputFolder, atomic_write_json, remove_stale_temporaries, resolve_inside
from defectgen.io.sample import Box, Sample
from defectgen.masks import MaskGenerator
from defectgen.report import contact_sheet
from defectgen.synth.base import DefectGenerator

SETTINGS_FILE = ".defectgen-synthesize.json"  # the run's settings, so --resume can refuse a different run
DEFAULT_CATEGORY = "defect"

# Generator factories by model kind ("kind" in a model folder's defectgen.json) or by a bare name given as
# --model (for generators without a model folder). Values are "module:callable" (imported when used) or
# callables; each is called as factory(model, **options) and ignores options it has no use for.
GENERATORS: dict[str, str | Callable[..., DefectGenerator]] = {
    "ddpm": "defectgen.synth.ddpm_generator:DdpmGenerator",
    "cddpm": "defectgen.synth.ddpm_generator:DdpmGenerator",
    "ldm": "defectgen.synth.ldm_generator:LdmGenerator",
}
NAMED_GENERATORS: dict[str, str | Callable[..., DefectGenerator]] = {
    "draem": "defectgen.synth.draem:from_options",
    "copypaste": "defectgen.synth.copypaste:from_options",
}


def register_generator(kind: str, factory: str | Callable[..., DefectGenerator], named: bool = False) -> None:
    """Add a generator: by model kind (named=False), or as a bare --model name such as "draem" (named=True)."""
    (NAMED_GENERATORS if named else GENERATORS)[kind] = factory


def _resolve(factory: str | Callable[..., DefectGenerator]) -> Callable[..., DefectGenerator]:
    if callable(factory):
        return factory
    module, _, attr = factory.partition(":")
    return getattr(importlib.import_module(module), attr)


def load_generator(model: str | Path, **options: Any) -> DefectGenerator:
    """The generator for `model`: a bare name from NAMED_GENERATORS, or a model folder whose defectgen.json
    names its kind. Options that are None are dropped, so factories keep their own defaults."""
    options = {k: v for k, v in options.items() if v is not None}
    name = str(model)
    if name in NAMED_GENERATORS:
        return _resolve(NAMED_GENERATORS[name])(name, **options)
    path = Path(model)
    meta_path = path / "defectgen.json"
    if _is_foreign_inpainting_model(path):  # a diffusers inpainting folder or hub id not trained here
        return _resolve(GENERATORS["ldm"])(name, **options)
    if not path.exists():
        known = ", ".join(sorted(NAMED_GENERATORS))
        raise DefectgenError(path, "no such model folder" + (f" (or generator name: {known})" if known else ""))
    if not meta_path.is_file():
        raise DefectgenError(path, "not a defectgen model: no defectgen.json in this folder")
    try:
        kind = json.loads(meta_path.read_text(encoding="utf-8")).get("kind")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise DefectgenError(meta_path, "not valid defectgen model metadata (JSON object expected)") from None
    if kind not in GENERATORS:
        raise DefectgenError(meta_path, f"unknown model kind {kind!r}; known: {', '.join(sorted(GENERATORS))}")
    return _resolve(GENERATORS[kind])(path, **options)


def _is_foreign_inpainting_model(path: Path) -> bool:
    """A local diffusers pipeline folder without defectgen.json, or something shaped like a hub id (owner/name)
    that is not a local path: both go to the text-guided generator, which loads them with from_pretrained."""
    if path.exists():
        index = path / "model_index.json"
        if (path / "defectgen.json").exists() or not index.is_file():
            return False
        try:
            return "Inpaint" in json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
        except (json.JSONDecodeError, AttributeError):
            return False
    parts = str(path).split("/")
    return len(parts) == 2 and all(parts) and not str(path).startswith((".", "~"))


# ---- masks ----------------------------------------------------------------------------------------------------

class MaskFolder:
    """Masks used as they are: the PNGs of DIR/masks (a `defectgen masks` output) or DIR, in name order; sample
    i takes mask i (cycling). Each must have the size of the normal image it is used with."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        if not folder.is_dir():
            raise DefectgenError(folder, "mask folder not found")
        source = folder / "masks" if (folder / "masks").is_dir() else folder
        self.paths = sorted(p for p in source.rglob("*") if is_image_file(p))
        if not self.paths:
            raise DefectgenError(source, "no mask images found")
        self.folder = folder

    def describe(self) -> dict[str, Any]:
        return {"kind": "folder", "path": str(self.folder), "masks": len(self.paths)}

    def __call__(self, index: int, height: int, width: int, foreground=None, label=None,
                 image_path: Path | None = None) -> tuple[np.ndarray, list[Box]]:
        path = self.paths[index % len(self.paths)]
        mask = read_mask(path, (height, width), image_path)
        box = Box.from_mask(mask, label)
        return mask, [box] if box else []


def make_masks(masks: str | Path, seed: int = 0, preset: str | None = None, **options: Any):
    """perlin | bbox (drawn per sample from (seed, i), optionally from a preset) or a folder of mask images."""
    if str(masks) in ("perlin", "bbox"):
        return MaskGenerator(str(masks), seed=seed, preset=preset, **options)
    if preset:
        raise DefectgenError(None, "--mask-preset applies to perlin or bbox masks, not to a mask folder")
    return MaskFolder(masks)


# ---- per-sample choices -----------------------------------------------------------------------------------------

def sample_seed(seed: int, index: int) -> int:
    """The seed of sample `index` (fits torch.Generator.manual_seed)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def _choice_rng(seed: int, index: int, what: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index), 7919, what])


def choose_normal(seed: int, index: int, count: int) -> int:
    return int(_choice_rng(seed, index, 0).integers(count))


def choose_class(seed: int, index: int, class_name: str | None, distribution: dict[str, float] | None) -> str | None:
    if class_name is not None or not distribution:
        return class_name
    names = list(distribution)
    p = np.asarray([distribution[c] for c in names], float)
    return names[int(_choice_rng(seed, index, 1).choice(len(names), p=p / p.sum()))]


# ---- compositing ------------------------------------------------------------------------------------------------

def _to_model(window: np.ndarray, channels: int | None) -> np.ndarray:
    x = to_float(window)
    return x if channels is None else match_channels(x, channels)


def _from_model(generated: np.ndarray, window_float: np.ndarray) -> np.ndarray:
    """Back to the window's channels: gray output on an RGB image changes its luminance and keeps its colour."""
    c_out, c_in = generated.shape[2], window_float.shape[2]
    if c_out == c_in:
        return generated
    if c_out == 3:
        return match_channels(generated, 1)
    return window_float + (generated - match_channels(window_float, 1))


def _resize_to(image: np.ndarray, h: int, w: int, nearest: bool = False) -> np.ndarray:
    if image.shape[:2] == (h, w):
        return image
    interp = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if image.shape[0] > h else cv2.INTER_LINEAR)
    out = cv2.resize(image, (w, h), interpolation=interp)
    return out.reshape(h, w, -1) if image.ndim == 3 else out


def composite(normal: np.ndarray, generated: np.ndarray, mask: np.ndarray, y0: int = 0, x0: int = 0) -> np.ndarray:
    """Paste the generated window (float [0, 1], normal's channels) into a copy of `normal` inside `mask` only,
    converting to the normal's dtype first, so every pixel outside the mask stays bit-exact."""
    out = normal.copy()
    h, w = generated.shape[:2]
    region = out[y0:y0 + h, x0:x0 + w]
    m = mask[y0:y0 + h, x0:x0 + w]
    region[m] = from_float(generated, normal.dtype)[m]
    return out


# ---- the run ----------------------------------------------------------------------------------------------------

@dataclass
class SynthesisResult:
    out: Path
    written: int
    skipped_existing: int
    annotations: int
    seconds: float


def _normals(normals: str | Path | Dataset) -> Dataset:
    ds = normals if isinstance(normals, Dataset) else open_dataset(normals)
    if ds.format == "mvtec":
        ds = ds.select(split="train", normal=True)
    else:
        ds = ds.select(normal=True)
    if not len(ds):
        raise DefectgenError(getattr(ds, "root", normals), "no normal images found")
    return ds


def synthesize(
    generator: DefectGenerator,
    normals: str | Path | Dataset,
    out: str | Path,
    n: int,
    *,
    masks: str | Path | Any = "perlin",
    mask_preset: str | None = None,
    class_name: str | None = None,
    seed: int = 0,
    batch_size: int = 8,
    resume: bool = False,
    overwrite: bool = False,
    prompt: str | None = None,
    sheet_size: int = 32,
    progress: bool = True,
    log: Callable[[str], None] = print,
    shard: tuple[int, int] | None = None,
    protect: tuple[str | Path | None, ...] = (),
) -> SynthesisResult:
    """Write `n` samples to `out`. `masks` is "perlin", "bbox", a folder of masks, or any callable
    (index, h, w, foreground=None, label=None) -> (mask, boxes).

    shard=(k, K) writes only samples i with i % K == k, into the same folder as the other shards; the COCO file
    and contact sheet are written once every sample is on disk. Under `accelerate launch` the shard is taken from
    the process index, and the main process writes them after all processes are done."""
    import time

    from tqdm.auto import tqdm

    from defectgen import __version__

    started = time.perf_counter()
    if n < 1:
        raise DefectgenError(None, "--n must be at least 1")
    if batch_size < 1:
        raise DefectgenError(None, "--batch-size must be at least 1")
    if hasattr(generator, "check_class"):
        generator.check_class(class_name)
    dataset = _normals(normals)
    if hasattr(generator, "make_mask"):  # it pastes real defects, so the masks are theirs (copypaste)
        if str(masks) != "perlin" or mask_preset:
            raise DefectgenError(None, f"--model {generator.name} brings its own masks (the pasted defects'); "
                                 "leave out --masks, --masks-from and --mask-preset")
        mask_source = generator
    else:
        mask_source = masks if callable(masks) else make_masks(masks, seed, mask_preset)

    settings = {
        "generator": generator.info(), "normals": str(dataset.root), "normal_images": len(dataset),
        "masks": mask_source.describe() if hasattr(mask_source, "describe") else repr(mask_source),
        "class": class_name, "prompt": prompt, "seed": int(seed),
    }
    settings = json.loads(json.dumps(settings, default=str))
    state = None
    if shard is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by accelerate / torchrun
        from accelerate import PartialState

        state = PartialState()
        shard = (state.process_index, state.num_processes)
    rank, world = shard or (0, 1)
    if not 0 <= rank < world:
        raise DefectgenError(None, f"shard {rank}/{world} does not exist; shards are 0/K .. K-1/K")
    if world > 1 and state is None and overwrite:
        raise DefectgenError(out, "--overwrite cannot be combined with --shard: the shards share this folder")
    if world > 1:
        resume = resume or state is None or not state.is_main_process  # shards fill one folder together
    out = Path(out)
    settings_path = out / SETTINGS_FILE
    if state is not None and not state.is_main_process:
        state.wait_for_everyone()  # the main process prepares the folder first
    if resume and out.is_dir():
        _check_resumable(out, n)
    if resume and settings_path.is_file():
        try:
            previous = json.loads(settings_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            previous = None
        if not isinstance(previous, dict):
            raise DefectgenError(settings_path, "not valid JSON settings; use --overwrite to start again")
        changed = sorted(k for k in settings if previous.get(k) != settings[k])
        if changed:
            raise DefectgenError(out, f"--resume with different settings ({', '.join(changed)}) than the run that "
                                 "made this folder; use --overwrite to start again")
    folder = OutputFolder(out, overwrite=overwrite, resume=resume, verb="synthesize",
                          protect=[dataset.root, getattr(mask_source, "folder", None), *protect],
                          worth_keeping=lambda d: any((d / "images").glob("*.png")))
    out = folder.prepare()
    try:
        if resume:
            removed = remove_stale_temporaries(out)
            if removed:
                log(f"removed {removed} temporary file(s) left by an interrupted run")
        atomic_write_json(settings_path, settings)
        (out / "images").mkdir(exist_ok=True)
        (out / "masks").mkdir(exist_ok=True)
        if state is not None and state.is_main_process:
            state.wait_for_everyone()

        def names(i: int) -> tuple[Path, Path]:
            return out / "images" / f"{i:06d}.png", out / "masks" / f"{i:06d}.png"

        done = {i for i in range(n) if all(p.is_file() for p in names(i))} if resume else set()
        if done:
            log(f"resuming: {len(done)} of {n} samples already written")
        distribution = getattr(generator, "class_distribution", None)
        cache: OrderedDict[int, np.ndarray] = OrderedDict()

        def normal_image(j: int) -> np.ndarray:
            if j not in cache:
                cache[j] = dataset[j].image
                if len(cache) > 64:
                    cache.popitem(last=False)
            return cache[j]

        resolution, channels = generator.resolution, generator.channels
        todo = [i for i in range(n) if i not in done and i % world == rank]
        bar = tqdm(total=n, initial=len(done), desc="synthesize", unit="img", dynamic_ncols=True, disable=not progress)
        for b in range(0, len(todo), batch_size):
            jobs = []
            for i in todo[b:b + batch_size]:
                j = choose_normal(seed, i, len(dataset))
                normal = normal_image(j)
                h, w = normal.shape[:2]
                cls = choose_class(seed, i, class_name, distribution)
                kwargs = {"image_path": dataset.entries[j].image_path} if isinstance(mask_source, MaskFolder) else {}
                if mask_source is generator:  # the defect's own mask, placed from the sample's seed
                    mask = generator.make_mask(normal, cls, sample_seed(seed, i))
                else:
                    mask, _ = mask_source(i, h, w, label=cls, **kwargs)
                if resolution is None:
                    y0, x0, wh, ww = 0, 0, h, w
                else:
                    y0, x0, wh, ww = mask_window(h, w, mask, resolution)
                window = normal[y0:y0 + wh, x0:x0 + ww]
                model_in = _to_model(window, channels)
                model_mask = mask[y0:y0 + wh, x0:x0 + ww]
                if resolution is not None:
                    model_in = _resize_to(model_in, resolution, resolution)
                    model_mask = _resize_to(model_mask.astype(np.uint8), resolution, resolution, nearest=True) > 0
                    if mask.any() and not model_mask.any():  # a sliver lost in the resize still gets generated
                        model_mask = _resize_to(model_mask.astype(np.uint8), resolution, resolution) > 0
                jobs.append((i, normal, mask, cls, (y0, x0, wh, ww), model_in, model_mask))
            generated = generator.generate([jb[5] for jb in jobs], [jb[6] for jb in jobs],
                                           [sample_seed(seed, jb[0]) for jb in jobs], [jb[3] for jb in jobs])
            for (i, normal, mask, _cls, (y0, x0, wh, ww), _, _), gen in zip(jobs, generated, strict=True):
                gen = _resize_to(np.asarray(gen, np.float32), wh, ww)
                gen = _from_model(gen, to_float(normal[y0:y0 + wh, x0:x0 + ww]))
                image = composite(normal, gen, mask, y0, x0)
                image_path, mask_path = names(i)
                write_mask(mask_path, mask)
                write_image(image_path, image)  # written last: an image on disk means the sample is complete
                bar.update(1)
        bar.close()
        if state is not None:
            state.wait_for_everyone()
            if not state.is_main_process:
                return SynthesisResult(out, len(todo), len(done), 0, time.perf_counter() - started)
        elif world > 1 and not all(p.is_file() for i in range(n) for p in names(i)):
            log(f"shard {rank}/{world}: wrote {len(todo)} sample(s); annotations.json is written by the shard that "
                "completes the set (or by `synthesize --resume` with the same settings)")
            return SynthesisResult(out, len(todo), len(done), 0, time.perf_counter() - started)

        info = {
            "defectgen": {
                "model": generator.info().get("model", getattr(generator, "name", None)),
                "generator": getattr(generator, "name", None), "prompt": prompt, "seed": int(seed),
                "sampler": generator.info().get("sampler"), "steps": generator.info().get("steps"),
                "version": __version__, "n": n, "settings": settings,
            }
        }
        n_ann = write_annotations(out, n, seed, class_name, distribution, dataset, info)
        samples = []
        for i in range(min(n, sheet_size)):
            image_path, mask_path = names(i)
            cls = choose_class(seed, i, class_name, distribution) or DEFAULT_CATEGORY
            samples.append(Sample(read_image(image_path), read_mask(mask_path), cls))
        contact_sheet(samples, out / "contact_sheet.png")
        return SynthesisResult(out, len(todo), len(done), n_ann, time.perf_counter() - started)
    except BaseException:
        folder.abandon()  # a run that failed before its first sample leaves nothing behind
        raise


def _check_resumable(out: Path, n: int) -> None:
    """Before --resume touches `out`: its sample files must lie inside it (no symbolic link out), and it must not
    hold samples beyond `n`, which the new annotations.json would leave unannotated."""
    indices = []
    for sub in ("images", "masks"):
        folder = resolve_inside(out, sub, what="folder")
        for p in folder.glob("*.png") if folder.is_dir() else ():
            resolve_inside(out, f"{sub}/{p.name}", what="sample file")
            if p.stem.isdigit():
                indices.append(int(p.stem))
    if indices and max(indices) >= n:
        last = max(indices)
        raise DefectgenError(out, f"folder holds samples up to {last:06d}.png but --n is {n}; --resume cannot shrink "
                             f"a set: give --n {last + 1} or more, or --overwrite to start again")


def write_annotations(out: Path, n: int, seed: int, class_name: str | None, distribution, dataset: Dataset,
                      info: dict[str, Any]) -> int:
    """COCO for samples 0..n-1 from the mask files on disk (so resumed and fresh samples are treated alike):
    one annotation per connected region of each mask."""
    coco = CocoBuilder()
    for i in range(n):
        mask = read_mask(out / "masks" / f"{i:06d}.png")
        h, w = mask.shape
        j = choose_normal(seed, i, len(dataset))
        cls = choose_class(seed, i, class_name, distribution) or DEFAULT_CATEGORY
        image_id = coco.add_image(f"images/{i:06d}.png", h, w, image_id=i + 1, mask_file=f"masks/{i:06d}.png",
                                  source=str(dataset.entries[j].image_path), seed=sample_seed(seed, i))
        count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        for k in range(1, count):
            coco.add_mask(image_id, labels == k, cls)
    coco.save(out / "annotations.json", info)
    return len(coco.annotations)
