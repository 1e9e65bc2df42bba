"""normals x masks x generator -> an output folder with exact annotations (docs/data-contract.md).

    out/images/000000.png   the normal image with a defect painted inside the mask (same size, channels, bit depth)
    out/masks/000000.png    the mask, 0/255
    out/annotations.json    COCO: one annotation per connected mask region; info.defectgen records the run
    out/contact_sheet.png   the first samples with mask outlines

Generic over `DefectGenerator` (synth/base.py): any generator (DDPM, conditional DDPM, LDM, DRAEM, copy-paste)
plugs in through `load_generator`, and over `MaskSource` (masks/source.py): the masks come from `resolve_masks`, or
from the generator itself when it declares that it makes its own. The run's choices are one `SynthesisOptions`
(synth/options.py). Sample i takes its seed, its normal image, its class and its mask from (seed, i) alone, so a
resumed or re-batched run makes the same files. The pipeline composites in the normal image's own dtype, so
pixels outside the mask are bit-exact copies of the normal image whatever the generator returns.
"""

from __future__ import annotations

import json
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from defectgen.errors import DefectgenError
from defectgen.io.coco import CocoBuilder
from defectgen.io.datasets import Dataset, open_dataset
from defectgen.io.files import atomic_write_json, remove_stale_temporaries, resolve_inside
from defectgen.io.images import (
    from_float,
    mask_window,
    match_channels,
    read_image,
    read_mask,
    resize,
    to_float,
    to_model_size,
    write_image,
    write_mask,
)
from defectgen.io.output import OutputFolder
from defectgen.io.pictures import contact_sheet, text_card
from defectgen.io.sample import Sample
from defectgen.masks import MaskSource, resolve_masks
from defectgen.synth.base import GENERATORS as GENERATORS
from defectgen.synth.base import DefectGenerator, abilities
from defectgen.synth.base import load_generator as load_generator
from defectgen.synth.base import register_generator as register_generator
from defectgen.synth.options import SynthesisOptions

SETTINGS_FILE = ".defectgen-synthesize.json"  # the run's settings, so --resume can refuse a different run
DEFAULT_CATEGORY = "defect"


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


def composite(normal: np.ndarray, generated: np.ndarray, mask: np.ndarray, y0: int = 0, x0: int = 0) -> np.ndarray:
    """Paste the generated window (float [0, 1], normal's channels) into a copy of `normal` inside `mask` only,
    converting to the normal's dtype first, so every pixel outside the mask stays bit-exact."""
    out = normal.copy()
    h, w = generated.shape[:2]
    region = out[y0:y0 + h, x0:x0 + w]
    m = mask[y0:y0 + h, x0:x0 + w]
    region[m] = from_float(generated, normal.dtype)[m]
    return out


# ---- one sample on its way through the generator ------------------------------------------------------------

@dataclass
class _Job:
    """Output sample `index` between its mask and its defect: the sample (its image is still the normal), the
    window of the normal the model works on, and what the model is given."""

    index: int
    sample: Sample
    window: tuple[int, int, int, int]  # y0, x0, h, w
    model_in: np.ndarray
    model_mask: np.ndarray


class _Run:
    """The per-sample work of one synthesize run. What sample i is (its normal and its class) is drawn once from
    (seed, i); the output `Sample` is then filled as it goes: mask and boxes from the mask source, the generated
    defect, and written to disk and to the COCO builder from that one record."""

    def __init__(self, generator: DefectGenerator, dataset: Dataset, mask_source: MaskSource, out: Path, seed: int,
                 class_name: str | None):
        self.generator, self.dataset, self.mask_source = generator, dataset, mask_source
        self.out, self.seed, self.class_name = out, int(seed), class_name
        self.distribution = generator.class_distribution if abilities(generator).conditional else None
        self._plans: dict[int, tuple[int, str | None]] = {}
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def paths(self, i: int) -> tuple[Path, Path]:
        return self.out / "images" / f"{i:06d}.png", self.out / "masks" / f"{i:06d}.png"

    def plan(self, i: int) -> tuple[int, str | None]:
        """(normal index, class) of sample i, drawn once."""
        if i not in self._plans:
            self._plans[i] = (choose_normal(self.seed, i, len(self.dataset)),
                              choose_class(self.seed, i, self.class_name, self.distribution))
        return self._plans[i]

    def _normal(self, j: int) -> np.ndarray:
        if j not in self._cache:
            self._cache[j] = self.dataset[j].image
            if len(self._cache) > 64:
                self._cache.popitem(last=False)
        return self._cache[j]

    def sample(self, i: int, image: np.ndarray | None = None) -> Sample:
        """Output sample i: its class, source, seed and files; its image is `image`, else the normal it is
        painted on."""
        j, cls = self.plan(i)
        image_path, mask_path = self.paths(i)
        return Sample(self._normal(j) if image is None else image, class_name=cls, path=image_path,
                      mask_path=mask_path, source=self.dataset.entries[j].image_path,
                      seed=sample_seed(self.seed, i))

    def written(self, i: int) -> Sample:
        """Sample i as it lies on disk (made earlier, by a resumed run or by another shard), for annotation: its
        mask read back; the mask stands in for the image, of which only the size is used."""
        mask = read_mask(self.paths(i)[1])
        sample = self.sample(i, image=mask[:, :, None])
        sample.mask = mask
        return sample

    def job(self, i: int) -> _Job:
        s = self.sample(i)
        h, w = s.height, s.width
        s.mask, s.boxes = self.mask_source.mask_for(i, s)
        resolution = self.generator.resolution
        y0, x0, wh, ww = (0, 0, h, w) if resolution is None else \
            mask_window(h, w, s.mask, resolution, context=getattr(self.generator, "context", 1.0))
        model_in = _to_model(s.image[y0:y0 + wh, x0:x0 + ww], self.generator.channels)
        window_mask = s.mask[y0:y0 + wh, x0:x0 + ww]
        model_mask = window_mask
        if resolution is not None:
            model_in, model_mask = to_model_size(model_in, window_mask, resolution)
        return _Job(i, s, (y0, x0, wh, ww), model_in, model_mask)

    def finish(self, job: _Job, generated: np.ndarray) -> Sample:
        """The job's sample with the generated window pasted inside its mask."""
        s = job.sample
        y0, x0, wh, ww = job.window
        gen = resize(np.asarray(generated, np.float32), wh, ww)
        gen = _from_model(gen, to_float(s.image[y0:y0 + wh, x0:x0 + ww]))
        s.image = composite(s.image, gen, s.mask, y0, x0)
        return s

    def fill(self, n: int, resume: bool, rank: int, world: int, batch_size: int, show: bool,
             log: Callable[[str], None]) -> tuple[int, int, CocoBuilder]:
        """Make the samples of 0..n-1 that are this shard's (i % world == rank) and not on disk yet (with `resume`);
        (how many written, how many already there, the COCO builder holding the written ones)."""
        from defectgen.progress import bar as progress_bar

        done = {i for i in range(n) if all(p.is_file() for p in self.paths(i))} if resume else set()
        if done:
            log(f"resuming: {len(done)} of {n} samples already written")
        todo = [i for i in range(n) if i not in done and i % world == rank]
        coco = CocoBuilder(root=self.out, default_category=DEFAULT_CATEGORY)
        with progress_bar(total=n, initial=len(done), desc="synthesize", unit="img", leave=True,
                          disable=not show) as bar:
            self.generate(todo, batch_size, coco, bar)
        return len(todo), len(done), coco

    def generate(self, todo: list[int], batch_size: int, coco: CocoBuilder, bar) -> None:
        """Make, write and annotate samples `todo`, a batch at a time."""
        for b in range(0, len(todo), batch_size):
            jobs = [self.job(i) for i in todo[b:b + batch_size]]
            generated = self.generator.generate([jb.model_in for jb in jobs], [jb.model_mask for jb in jobs],
                                                [jb.sample.seed for jb in jobs],
                                                [jb.sample.class_name for jb in jobs])
            for jb, gen in zip(jobs, generated, strict=True):
                sample = self.finish(jb, gen)
                write_mask(sample.mask_path, sample.mask)
                write_image(sample.path, sample.image)  # written last: an image on disk means the sample is complete
                coco.add(sample, image_id=jb.index + 1)
                bar.update(1)


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


def _mask_source(generator: DefectGenerator, options: SynthesisOptions) -> MaskSource:
    """The masks `options` name; a generator that makes its own masks (it pastes real defects) is the source."""
    if abilities(generator).makes_own_masks:
        if str(options.masks) != "perlin" or options.mask_preset or options.masks_from is not None:
            raise DefectgenError(None, f"`model` {generator.name} brings its own masks (the pasted defects'); "
                                 "leave out `masks`, `masks_from` and `mask_preset`")
        return generator
    return resolve_masks(options.masks, seed=options.seed, preset=options.mask_preset, masks_from=options.masks_from)


def _settings(generator: DefectGenerator, dataset: Dataset, mask_source: MaskSource,
              options: SynthesisOptions) -> dict[str, Any]:
    settings = {
        "generator": generator.info(), "normals": str(dataset.root), "normal_images": len(dataset),
        "masks": mask_source.describe(), "class": options.class_name, "prompt": options.prompt,
        "seed": int(options.seed),
    }
    return json.loads(json.dumps(settings, default=str))


def _shard(shard: tuple[int, int] | None, resume: bool, overwrite: bool, out: str | Path):
    """(accelerate state or None, rank, world, resume): under `accelerate launch` the shard is the process's."""
    state = None
    if shard is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by accelerate / torchrun
        from defectgen.diffusion.training import process_state  # joins the launcher's group, also on a CPU

        state = process_state()
        shard = (state.process_index, state.num_processes)
    rank, world = shard or (0, 1)
    if not 0 <= rank < world:
        raise DefectgenError(None, f"shard {rank}/{world} does not exist; shards are 0/K .. K-1/K")
    if world > 1 and state is None and overwrite:
        raise DefectgenError(out, "`overwrite` cannot be combined with `shard`: the shards share this folder")
    if world > 1:
        resume = resume or state is None or not state.is_main_process  # shards fill one folder together
    return state, rank, world, resume


def _check_settings(out: Path, settings: dict[str, Any]) -> None:
    """--resume only continues the run that made `out`."""
    settings_path = out / SETTINGS_FILE
    if not settings_path.is_file():
        return
    try:
        previous = json.loads(settings_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        previous = None
    if not isinstance(previous, dict):
        raise DefectgenError(settings_path, "not valid JSON settings; use `overwrite` to start again")
    changed = sorted(k for k in settings if previous.get(k) != settings[k])
    if changed:
        raise DefectgenError(out, f"`resume` with different settings ({', '.join(changed)}) than the run that "
                             "made this folder; use `overwrite` to start again")


def _start(out: Path, settings: dict[str, Any], resume: bool, log: Callable[[str], None]) -> None:
    if resume:
        removed = remove_stale_temporaries(out)
        if removed:
            log(f"removed {removed} temporary file(s) left by an interrupted run")
    atomic_write_json(out / SETTINGS_FILE, settings)
    (out / "images").mkdir(exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)


def _info(generator: DefectGenerator, prompt: str | None, seed: int, n: int,
          settings: dict[str, Any]) -> dict[str, Any]:
    from defectgen import __version__

    info = generator.info()
    return {"defectgen": {
        "model": info.get("model", generator.name),
        "generator": generator.name, "prompt": prompt, "seed": int(seed),
        "sampler": info.get("sampler"), "steps": info.get("steps"),
        "version": __version__, "n": n, "settings": settings,
    }}


def _write_set(run: _Run, coco: CocoBuilder, n: int, info: dict[str, Any], sheet_size: int) -> int:
    """annotations.json for samples 0..n-1 (those made by earlier runs or other shards read back from disk) and
    the contact sheet of the first `sheet_size`. Returns the number of annotations."""
    added = {im["id"] for im in coco.images}
    for i in range(n):
        if i + 1 not in added:
            coco.add(run.written(i), image_id=i + 1)
    coco.save(run.out / "annotations.json", info)
    write_contact_sheet(run.out, [(*run.paths(i), run.plan(i)[1], run.dataset.entries[run.plan(i)[0]].image_path)
                                  for i in range(min(n, sheet_size))])
    return len(coco.annotations)


def write_contact_sheet(out: Path, files: list[tuple[Path, Path, str | None, Path | None]], size: int = 32,
                        empty_note: str = "no samples") -> None:
    """out/contact_sheet.png: the first `size` samples of `files` (image, mask, class name, source normal), each
    with its mask outlined, then its defect enlarged beside the same crop of the normal; when `files` is empty, a
    sheet that says `empty_note` (a stale sheet never stays, and the sheet is never just gone)."""
    tiles = [Sample(read_image(image), read_mask(mask), cls or DEFAULT_CATEGORY, source=source)
             for image, mask, cls, source in files[:size]]
    if tiles:
        contact_sheet(tiles, out / "contact_sheet.png", columns=4, zoom=True)
    else:
        write_image(out / "contact_sheet.png", text_card(empty_note))


def synthesize(generator: DefectGenerator, normals: str | Path | Dataset, out: str | Path, n: int,
               options: SynthesisOptions | None = None, *, log: Callable[[str], None] = print,
               protect: tuple[str | Path | None, ...] = (), sheet_size: int = 32) -> SynthesisResult:
    """Write `n` samples to `out`, made as `options` say (default `SynthesisOptions()`: Perlin masks, seed 0; its
    `generator` and `filters` are for `synthesize_set`). `protect`: other inputs (the model folder) the output
    must stay out of; `sheet_size`: the samples on the contact sheet.

    `options.shard` (k, K) writes only samples i with i % K == k, into the same folder as the other shards; the
    COCO file and contact sheet are written once every sample is on disk. Under `accelerate launch` the shard is
    taken from the process index, and the main process writes them after all processes are done."""
    options = options or SynthesisOptions()
    started = time.perf_counter()
    if n < 1:
        raise DefectgenError(None, "`n` must be at least 1")
    if options.batch_size < 1:
        raise DefectgenError(None, "`batch_size` must be at least 1")
    if abilities(generator).conditional:
        generator.check_class(options.class_name)
    dataset = _normals(normals)
    mask_source = _mask_source(generator, options)
    settings = _settings(generator, dataset, mask_source, options)
    state, rank, world, resume = _shard(options.shard, options.resume, options.overwrite, out)
    out = Path(out)
    if state is not None and not state.is_main_process:
        state.wait_for_everyone()  # the main process prepares the folder first
    if resume and out.is_dir():
        _check_resumable(out, n)
        _check_settings(out, settings)
    folder = OutputFolder(out, overwrite=options.overwrite, resume=resume, verb="synthesize",
                          protect=[dataset.root, mask_source.folder, *protect],
                          worth_keeping=lambda d: any((d / "images").glob("*.png")))
    out = folder.prepare()
    try:
        _start(out, settings, resume, log)
        if state is not None and state.is_main_process:
            state.wait_for_everyone()
        run = _Run(generator, dataset, mask_source, out, options.seed, options.class_name)
        show = options.progress and (state is None or state.is_main_process)
        written, existing, coco = run.fill(n, resume, rank, world, options.batch_size, show, log)
        if state is not None:
            state.wait_for_everyone()
            if not state.is_main_process:
                return SynthesisResult(out, written, existing, 0, time.perf_counter() - started)
        elif world > 1 and not all(p.is_file() for i in range(n) for p in run.paths(i)):
            log(f"shard {rank}/{world}: wrote {written} sample(s); annotations.json is written by the shard that "
                "completes the set (or by `synthesize --resume` with the same settings)")
            return SynthesisResult(out, written, existing, 0, time.perf_counter() - started)
        n_ann = _write_set(run, coco, n, _info(generator, options.prompt, options.seed, n, settings), sheet_size)
        return SynthesisResult(out, written, existing, n_ann, time.perf_counter() - started)
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
        raise DefectgenError(out, f"folder holds samples up to {last:06d}.png but `n` is {n}; `resume` cannot shrink "
                             f"a set: give `n` {last + 1} or more, or `overwrite` to start again")
