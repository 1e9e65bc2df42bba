"""One synthesis run as `defectgen synthesize` makes it, from one `SynthesisOptions` (synth/options.py): defaults
from the workspace, the generator, the samples (synth/pipeline.py), then the filters; and `filter_set`, the filters
alone on a finished set.

Errors and notes name the parameters in backticks (`model`); the command line shows its flags there instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from defectgen.synth.options import FilterOptions, SynthesisOptions

if TYPE_CHECKING:
    from defectgen.synth.base import DefectGenerator


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


def build_filters(options: FilterOptions, prompt: str | None = None) -> list:
    """The filters `options.names` (change, clip); the clip filter's material is `options.material`, else the one
    `prompt` names."""
    from defectgen.synth.filters import make_filters

    material = options.material
    if material is None and prompt and options.names:
        from defectgen.prompts import prompt_material

        material = prompt_material(prompt)
    return make_filters(list(options.names), clip_model=options.clip_model, tau0=options.tau0, lam=options.lam,
                        min_change=options.min_change, material=material)


def filter_set(out_dir: str | Path, options: FilterOptions, *, log: Callable[[str], None] = print):
    """Run the filters `options` name over the synthesized set in `out_dir` (rejected samples move to rejected/);
    filters that reject every sample are an error unless `options.allow_empty`."""
    from defectgen.synth.filters import filter_output

    return filter_output(out_dir, build_filters(options), log=log, allow_empty=options.allow_empty)


def synthesize_set(model: str | None, normals: str | Path | None, n: int, out_dir: str | Path | None = None,
                   options: SynthesisOptions | None = None, *, workspace=None, note: Callable[[str], None] = print,
                   log: Callable[[str], None] = print) -> SynthesisRun:
    """Generate `n` samples into `out_dir`, made as `options` say, and filter them. `model`, `normals` and
    `out_dir` (None) default from the workspace; `note` gets one line per default taken, `log` the summary and the
    filters' lines."""
    from defectgen.synth.pipeline import load_generator, synthesize
    from defectgen.workspace import Workspace, output_folder, synthesize_defaults

    options = options or SynthesisOptions()
    ws = workspace or Workspace()
    # build the filters first: a bad clip model fails before any generation
    chosen = build_filters(options.filters, options.prompt) if options.filters.names else []
    model, normals, notes = synthesize_defaults(ws, model, normals, options.prompt)
    for line in notes:
        note(line)
    generator = load_generator(model, prompt=options.prompt, **options.generator.given())
    out_dir, notes = output_folder(ws, out_dir, "set", generator.name, options.resume)
    for line in notes:
        note(line)
    options = replace(options, class_name=_class_name(generator, model, options, note))
    result = synthesize(generator, normals, out_dir, n, options, protect=(model, options.generator.textures))
    run = SynthesisRun(out_dir, model, normals, generator.name, options.class_name, result)
    if not result.annotations and options.shard:
        log(f"shard {options.shard[0]}/{options.shard[1]}: wrote {result.written} sample(s) to {out_dir}")
        return run
    log(f"wrote {result.written} sample(s) to {out_dir}"
        + (f" ({result.skipped_existing} already there)" if result.skipped_existing else "")
        + f": {result.annotations} annotation(s) in {out_dir / 'annotations.json'}, "
        f"contact sheet {out_dir / 'contact_sheet.png'}")
    figures = {"n": n, "annotations": result.annotations}
    if chosen:
        from defectgen.synth.filters import filter_output

        run.filtered = filter_output(out_dir, chosen, log=log, allow_empty=options.filters.allow_empty)
        figures.update(kept=run.filtered.kept, removed=run.filtered.removed)
    run.record = _record(run, options, figures)
    return run


def _class_name(generator: DefectGenerator, model: str, options: SynthesisOptions,
                note: Callable[[str], None]) -> str | None:
    """The samples' class: `options.class_name`, else, for a generator whose prompt names the class, the defect the
    prompt names (said in a note when the generator does not read the text itself)."""
    from defectgen.synth.base import abilities

    able = abilities(generator)
    if options.class_name is not None or not options.prompt or not able.prompt_names_class:
        return options.class_name
    from defectgen.prompts import prompt_class
    from defectgen.workspace import note as using

    class_name = prompt_class(options.prompt)
    if not able.takes_prompt:  # it cannot read text: the prompt names the class only
        shown = Path(model).resolve()
        shown = shown.relative_to(Path.cwd().resolve()) if shown.is_relative_to(Path.cwd().resolve()) else model
        note(using("class", class_name, f"from `prompt`; {shown} does not read text"))
    return class_name


def _record(run: SynthesisRun, options: SynthesisOptions, figures: dict[str, Any]) -> dict[str, Any]:
    """The workspace entry of a finished set."""
    from defectgen.workspace import set_record

    masks = str(options.masks_from) if options.masks_from is not None else options.masks
    return set_record(run.generator, {"model": run.model, "normals": run.normals},
                      {"prompt": options.prompt, "class": run.class_name, "masks": masks, "seed": options.seed,
                       "sampler": options.generator.sampler, "steps": options.generator.steps,
                       "filters": ",".join(options.filters.names) if options.filters.names else None}, **figures)
