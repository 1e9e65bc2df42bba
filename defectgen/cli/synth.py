"""Data verbs: masks (where defects go), synthesize (defects inside them) and filter (drop weak samples)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from defectgen.cli.common import (
    AllowEmpty,
    ClipModel,
    Command,
    Device,
    Filters,
    Fmt,
    Lam,
    MinChange,
    OnBad,
    Overwrite,
    Tau0,
    app,
    names,
    out,
    parse_shard,
    parse_size,
    record,
    say,
)

# the options of `synthesize` (declared here, as common.py declares the shared ones)
Model = Annotated[str | None, typer.Option("--model", help="A trained model folder (train-ddpm, train-ldm), a "
                                           "diffusers inpainting folder or hub id, draem, or copypaste (with "
                                           "--labeled) (default: the workspace's most recent model that fits).")]
Normals = Annotated[Path | None, typer.Option("--normals", help="Normal images to paint defects on (default: those "
                                              "the model was trained with).")]
Count = Annotated[int, typer.Option("--n", min=1, help="How many samples.")]
SetOut = Annotated[Path | None, typer.Option("--out", help="Output folder: images/, masks/, annotations.json "
                                             "(default: synth/<model>-N).")]
Masks = Annotated[str, typer.Option("--masks", help="perlin, bbox, or a folder of masks (used in name order; each "
                                    "must match its normal image's size).")]
MaskPreset = Annotated[str | None, typer.Option("--mask-preset", help="Mask preset (masks/) or a "
                                                "YAML path.")]
MasksFrom = Annotated[Path | None, typer.Option("--masks-from", help="Instead of --masks: reuse the masks (or "
                                                "boxes) of the real defects in this labeled set, each of the "
                                                "sample's class, at their native pixel size on the part's "
                                                "foreground, randomly flipped.")]
ClassName = Annotated[str | None, typer.Option("--class", help="Defect class (conditional models; default: drawn "
                                               "from the training classes). COCO category otherwise.")]
Prompt = Annotated[str | None, typer.Option("--prompt", help="Text-guided models: free text, or material/defect "
                                            "from the prompt library (prompts/), e.g. tile/crack.")]
NegativePrompt = Annotated[str | None, typer.Option("--negative-prompt", help="Text-guided models (default: the "
                                                    "prompt library's negative prompt).")]
MaskCrop = Annotated[int | None, typer.Option("--mask-crop", min=0, help="Text-guided models: generate in the "
                                              "mask's extent padded by PAD pixels at model resolution (diffusers' "
                                              "padding_mask_crop) instead of a model-sized window.")]
Textures = Annotated[Path | None, typer.Option("--textures", help="--model draem: texture images (default: the "
                                               "normals themselves).")]
Labeled = Annotated[Path | None, typer.Option("--labeled", help="--model copypaste, or a DDPM run (the harmonized "
                                              "transplant): the labeled set whose real defects (masks or boxes) are "
                                              "pasted, augmented, onto the normals (then re-drawn by the DDPM from "
                                              "--strength).")]
Blend = Annotated[str | None, typer.Option("--blend", help="--model copypaste or a transplant: paste (default) or "
                                           "seamless (Poisson blending).")]
Augment = Annotated[str | None, typer.Option("--augment", help="--model copypaste or a transplant: full (random "
                                             "zoom, rotation, warp, brightness; copypaste's default) or flips (the "
                                             "defect as recorded, mirrored; the transplant's default).")]
KeepCore = Annotated[float | None, typer.Option("--keep-core", help="Transplant: keep the pasted defect's own "
                                                "pixels in this share of its depth, blending to the DDPM's re-draw "
                                                "at its rim (1: a gradual blend over the whole depth; default: the "
                                                "DDPM re-draws the whole mask).")]
Strength = Annotated[float | None, typer.Option("--strength", help="Unconditional DDPM: t0/T, how far the normal "
                                                "image is diffused (default 0.5).")]
Sigma = Annotated[float | None, typer.Option("--sigma", help="Unconditional DDPM: std of the extra noise inside "
                                             "the mask (default 1.0).")]
Guidance = Annotated[float | None, typer.Option("--guidance", help="Conditional: classifier-free guidance scale "
                                                "(default 3.0).")]
Sampler = Annotated[str | None, typer.Option("--sampler", help="ddpm, ddim or dpm (default ddim).")]
SampleSteps = Annotated[int | None, typer.Option("--steps", min=1, help="Sampling steps (default ddpm 1000, ddim "
                                                 "50, dpm 20).")]
SynthBatch = Annotated[int, typer.Option("--batch-size", min=1, help="Samples per generator call.")]
SampleSeed = Annotated[int, typer.Option("--seed", help="Sample i depends only on (seed, i).")]
Shard = Annotated[str | None, typer.Option("--shard", help="K/N: write only samples i with i % N == K into --out "
                                           "(set automatically under `accelerate launch`); the shard that "
                                           "completes the set writes annotations.json.")]
Resume = Annotated[bool, typer.Option("--resume", help="Complete an interrupted run in --out.")]


@app.command("filter", cls=Command)
def filter_set(
    out_dir: Path = typer.Argument(..., help="A synthesize output folder."),
    filters: Filters = "change", clip_model: ClipModel = None, tau0: Tau0 = 0.5, lam: Lam = 1.0,
    min_change: MinChange = 0.02, allow_empty: AllowEmpty = False,
    material: str | None = typer.Option(None, "--material", help="clip: the material named in the normal text."),
) -> None:
    """Remove generated samples that a filter rejects; they move to OUT/rejected/ with their scores.

    Examples:

        defectgen filter synth/ --filter change

        defectgen filter synth/ --filter clip,change --clip-model openai/clip-vit-base-patch32 --tau0 0.6
    """
    from defectgen.synth.options import FilterOptions
    from defectgen.synth.run import filter_set as run

    run(out_dir, FilterOptions(names=tuple(names(filters)), clip_model=clip_model, tau0=tau0, lam=lam,
                               min_change=min_change, material=material, allow_empty=allow_empty), log=out.print)


@app.command("synthesize", cls=Command)
def synthesize(
    model: Model = None, normals: Normals = None, n: Count = 100, out_dir: SetOut = None, masks: Masks = "perlin",
    mask_preset: MaskPreset = None, masks_from: MasksFrom = None, class_name: ClassName = None,
    prompt: Prompt = None, negative_prompt: NegativePrompt = None, mask_crop: MaskCrop = None,
    textures: Textures = None, labeled: Labeled = None, blend: Blend = None, augment: Augment = None,
    keep_core: KeepCore = None, filters: Filters = None, clip_model: ClipModel = None, tau0: Tau0 = 0.5,
    lam: Lam = 1.0, min_change: MinChange = 0.02, allow_empty: AllowEmpty = False, strength: Strength = None,
    sigma: Sigma = None, guidance: Guidance = None, sampler: Sampler = None, steps: SampleSteps = None,
    batch_size: SynthBatch = 8, device: Device = None, seed: SampleSeed = 0, shard: Shard = None,
    resume: Resume = False, overwrite: Overwrite = False,
) -> None:
    """Generate defects inside masks on normal images and write images, masks and COCO annotations.

    Examples:

        defectgen synthesize --model runs/ddpm --normals good/ --n 100 --out synth/

        defectgen synthesize --model runs/cddpm --normals good/ --n 100 --masks bbox --class scratch --guidance 3 \\
            --sampler dpm --steps 20 --out synth/

        defectgen synthesize --model runs/ldm --normals good/ --n 100 --prompt "copper scratches" --out synth/

        defectgen synthesize --model draem --normals good/ --n 100 --out synth-draem/

        defectgen synthesize --model runs/cddpm --normals good/ --n 100 --masks-from labeled/ --out synth/

        defectgen synthesize --model copypaste --labeled labeled/ --normals good/ --n 100 --out synth-copypaste/

        defectgen synthesize --model runs/ddpm --labeled labeled/ --strength 0.2 --keep-core 1 --normals good/ \\
            --n 100 --out synth-transplant/
    """
    from defectgen.synth.options import FilterOptions, GeneratorOptions, SynthesisOptions
    from defectgen.synth.run import synthesize_set

    generator = GeneratorOptions(
        sampler=sampler, steps=steps, strength=strength, sigma=sigma, guidance=guidance,
        negative_prompt=negative_prompt, mask_crop=mask_crop, textures=textures, labeled=labeled, blend=blend,
        augment=augment, keep_core=keep_core, device=device)
    filtering = FilterOptions(names=tuple(names(filters)), clip_model=clip_model, tau0=tau0, lam=lam,
                              min_change=min_change, allow_empty=allow_empty)
    options = SynthesisOptions(
        masks=masks, mask_preset=mask_preset, masks_from=masks_from, class_name=class_name, prompt=prompt, seed=seed,
        batch_size=batch_size, shard=parse_shard(shard), resume=resume, overwrite=overwrite, generator=generator,
        filters=filtering)
    run = synthesize_set(model, normals, n, out_dir, options, note=say, log=out.print)
    if run.record is not None:
        record(run.out_dir, run.record)


@app.command("masks", cls=Command)
def masks(
    out_dir: Path = typer.Option(..., "--out", help="Output folder: masks/*.png and annotations.json."),
    kind: str = typer.Option("perlin", "--kind", help="perlin or bbox."),
    n: int = typer.Option(16, "--n", min=1, help="How many masks."),
    size: str | None = typer.Option(None, "--size", help="Mask size HxW, e.g. 256x256."),
    like: Path | None = typer.Option(None, "--like", help="Take mask sizes (and foregrounds) from these images."),
    fmt: Fmt = "auto",
    preset: str | None = typer.Option(None, "--preset", help="A preset name "
                                         "(masks/: perlin, perlin-small, perlin-large, bbox, "
                                         "scratches) or a YAML path."),
    like_labeled: Path | None = typer.Option(None, "--like-labeled", help="bbox: draw box sizes from the boxes "
                                                "(or mask extents) of this labeled set."),
    shape: str | None = typer.Option(None, "--shape", help="bbox: rect, ellipse or mixed."),
    min_area: float | None = typer.Option(None, "--min-area", help="perlin: smallest mask area (fraction)."),
    max_area: float | None = typer.Option(None, "--max-area", help="perlin: largest mask area (fraction)."),
    threshold: float | None = typer.Option(None, "--threshold", help="perlin: threshold on noise in [-1, 1]."),
    object_only: bool = typer.Option(False, "--object-only", help="Keep masks on the object's foreground "
                                     "(Otsu on each --like image)."),
    category: str = typer.Option("defect", "--category", help="COCO category name for the masks."),
    seed: int = typer.Option(0, "--seed", help="Mask i depends only on (seed, i)."),
    overwrite: Overwrite = False,
    on_bad: OnBad = "error",
) -> None:
    """Stamp Perlin or box masks where defects should go, as 0/255 PNGs and a COCO file.

    Examples:

        defectgen masks --kind perlin --n 100 --size 256x256 --seed 0 --out masks/

        defectgen masks --kind perlin --n 100 --like good/ --preset perlin-small --out masks/

        defectgen masks --kind bbox --n 50 --like good/ --like-labeled labeled/ --out boxes/
    """
    from defectgen.masks.writer import MaskSetOptions, write_mask_set

    if (size is None) == (like is None):
        raise typer.BadParameter("give exactly one of --size HxW or --like DIR")
    summary = write_mask_set(out_dir, MaskSetOptions(
        kind=kind, n=n, size=parse_size(size) if size else None, like=like, fmt=fmt, preset=preset,
        like_labeled=like_labeled, shape=shape, min_area=min_area, max_area=max_area, threshold=threshold,
        object_only=object_only, category=category, seed=seed, overwrite=overwrite, on_bad=on_bad))
    out.print(f"wrote {summary['masks']} masks to {out_dir}/masks and {out_dir}/annotations.json "
              f"(area fraction median {summary['area_median']:.4f}, min {summary['area_min']:.4f}, "
              f"max {summary['area_max']:.4f})")
    if summary["skipped"]:
        out.print(f"skipped {summary['skipped']} unreadable image(s) in {like}")
