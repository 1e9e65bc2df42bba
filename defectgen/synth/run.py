"""One synthesis run as `defectgen synthesize` makes it: defaults from the workspace, the generator, the masks, the
samples, then the filters; and `filter_set`, the filters alone on a finished set.

Errors and notes name the parameters in backticks (`model`); the command line shows its flags there instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class SynthesisRun:
    out_dir: Path
    model: str
    normals: Path
    generator: str
    class_name: str | None
    result: Any  # pipeline.SynthesisResult
    filtered: Any = None  # filters.FilterSummary, when filters ran
    record: dict[str, Any] | None = field(default=None)  # the workspace entry's fields; None for a partial shard


def build_filters(names: list[str], *, clip_model: str | None = None, tau0: float = 0.5, lam: float = 1.0,
                  min_change: float = 0.02, material: str | None = None, prompt: str | None = None) -> list:
    """The filters `names` (change, clip); the clip filter's material is `material`, else the one `prompt` names."""
    from defectgen.synth.filters import make_filters

    if material is None and prompt and names:
        from defectgen.prompts import prompt_material

        material = prompt_material(prompt)
    return make_filters(names, clip_model=clip_model, tau0=tau0, lam=lam, min_change=min_change, material=material)


def filter_set(out_dir: str | Path, names: list[str], *, clip_model: str | None = None, tau0: float = 0.5,
               lam: float = 1.0, min_change: float = 0.02, material: str | None = None, log=print,
               allow_empty: bool = False):
    """Run the filters `names` over the synthesized set in `out_dir` (rejected samples move to rejected/); filters
    that reject every sample are an error unless `allow_empty`."""
    from defectgen.synth.filters import filter_output

    chosen = build_filters(names, clip_model=clip_model, tau0=tau0, lam=lam, min_change=min_change,
                           material=material)
    return filter_output(out_dir, chosen, log=log, allow_empty=allow_empty)


def synthesize_set(model: str | None, normals: str | Path | None, n: int, out_dir: str | Path | None = None, *,
                   masks: str | Path = "perlin", mask_preset: str | None = None,
                   masks_from: str | Path | None = None, class_name: str | None = None, prompt: str | None = None,
                   filters: list[str] | None = None, clip_model: str | None = None, tau0: float = 0.5,
                   lam: float = 1.0, min_change: float = 0.02, allow_empty: bool = False, seed: int = 0,
                   batch_size: int = 8,
                   shard: tuple[int, int] | None = None, resume: bool = False, overwrite: bool = False,
                   progress: bool = True, workspace=None, note: Callable[[str], None] = print,
                   log: Callable[[str], None] = print, **generator_options: Any) -> SynthesisRun:
    """Generate `n` samples into `out_dir` and filter them. `model`, `normals` and `out_dir` (None) default from
    the workspace; the class of an unconditional DDPM comes from `prompt`; `note` gets one line per default taken,
    `log` the summary and the filters' lines. `generator_options` go to `load_generator` (sampler, steps,
    strength, sigma, guidance, negative_prompt, mask_crop, textures, labeled, blend, augment, keep_core, device)."""
    from defectgen.masks import synthesis_masks
    from defectgen.synth.pipeline import load_generator, synthesize
    from defectgen.workspace import Workspace, output_folder, synthesize_defaults
    from defectgen.workspace import note as using

    ws = workspace or Workspace()
    # build the filters first: a bad clip model fails before any generation
    chosen = build_filters(filters, clip_model=clip_model, tau0=tau0, lam=lam, min_change=min_change,
                           prompt=prompt) if filters else []
    model, normals, notes = synthesize_defaults(ws, model, normals, prompt)
    for line in notes:
        note(line)
    generator = load_generator(model, prompt=prompt, **generator_options)
    name = getattr(generator, "name", "synth")
    out_dir, notes = output_folder(ws, out_dir, "set", name, resume)
    for line in notes:
        note(line)
    class_name = class_name or getattr(generator, "default_class", None)
    if class_name is None and prompt and name == "ddpm":  # a DDPM cannot read text: the prompt names the class only
        from defectgen.prompts import prompt_class

        class_name = prompt_class(prompt)
        shown = Path(model).resolve()
        shown = shown.relative_to(Path.cwd().resolve()) if shown.is_relative_to(Path.cwd().resolve()) else model
        note(using("class", class_name, f"from `prompt`; {shown} is an unconditional DDPM and does not read text"))
    mask_source = synthesis_masks(masks, masks_from, seed, mask_preset)
    result = synthesize(generator, normals, out_dir, n, masks=mask_source, mask_preset=mask_preset,
                        class_name=class_name, seed=seed, batch_size=batch_size, resume=resume, overwrite=overwrite,
                        prompt=prompt, progress=progress, shard=shard,
                        protect=(model, generator_options.get("textures"), masks_from))
    run = SynthesisRun(out_dir, model, normals, name, class_name, result)
    if not result.annotations and shard:
        log(f"shard {shard[0]}/{shard[1]}: wrote {result.written} sample(s) to {out_dir}")
        return run
    log(f"wrote {result.written} sample(s) to {out_dir}"
        + (f" ({result.skipped_existing} already there)" if result.skipped_existing else "")
        + f": {result.annotations} annotation(s) in {out_dir / 'annotations.json'}, "
        f"contact sheet {out_dir / 'contact_sheet.png'}")
    figures = {"n": n, "annotations": result.annotations}
    if chosen:
        from defectgen.synth.filters import filter_output

        run.filtered = filter_output(out_dir, chosen, log=log, allow_empty=allow_empty)
        figures.update(kept=run.filtered.kept, removed=run.filtered.removed)
    run.record = {"type": getattr(generator, "name", "?"), "inputs": {"model": model, "normals": normals},
                  "params": {"prompt": prompt, "class": class_name,
                             "masks": str(masks_from) if masks_from is not None else masks, "seed": seed,
                             "sampler": generator_options.get("sampler"), "steps": generator_options.get("steps"),
                             "filters": ",".join(filters) if filters else None},
                  "figures": figures}
    return run
