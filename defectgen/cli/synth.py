"""Data verbs: masks (where defects go), synthesize (defects inside them) and filter (drop weak samples)."""

from __future__ import annotations

from pathlib import Path

import typer

from defectgen.cli.common import (
    AllowEmpty,
    ClipModel,
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


@app.command("filter")
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
    from defectgen.synth.run import filter_set as run

    run(out_dir, names(filters), clip_model=clip_model, tau0=tau0, lam=lam, min_change=min_change,
        material=material, log=out.print, allow_empty=allow_empty)


@app.command("synthesize")
def synthesize(
    model: str | None = typer.Option(None, "--model", help="A trained model folder (train-ddpm, train-ldm), a "
                                     "diffusers inpainting folder or hub id, draem, or copypaste (with --labeled) "
                                     "(default: the workspace's most recent model that fits)."),
    normals: Path | None = typer.Option(None, "--normals", help="Normal images to paint defects on (default: "
                                        "those the model was trained with)."),
    n: int = typer.Option(100, "--n", min=1, help="How many samples."),
    out_dir: Path | None = typer.Option(None, "--out", help="Output folder: images/, masks/, annotations.json "
                                        "(default: synth/<model>-N)."),
    masks: str = typer.Option("perlin", "--masks", help="perlin, bbox, or a folder of masks (used in name "
                              "order; each must match its normal image's size)."),
    mask_preset: str | None = typer.Option(None, "--mask-preset", help="Mask preset "
                                            "(defectgen/data/masks/) or a YAML path."),
    masks_from: Path | None = typer.Option(None, "--masks-from", help="Instead of --masks: reuse the masks (or "
                                           "boxes) of the real defects in this labeled set, each of the sample's "
                                           "class, at their native pixel size on the part's foreground, "
                                           "randomly flipped."),
    class_name: str | None = typer.Option(None, "--class", help="Defect class (conditional models; default: "
                                          "drawn from the training classes). COCO category otherwise."),
    prompt: str | None = typer.Option(None, "--prompt", help="Text-guided models: free text, or material/defect "
                                      "from the prompt library (defectgen/data/prompts/), e.g. tile/crack."),
    negative_prompt: str | None = typer.Option(None, "--negative-prompt", help="Text-guided models (default: the "
                                               "prompt library's negative prompt)."),
    mask_crop: int | None = typer.Option(None, "--mask-crop", min=0, help="Text-guided models: generate in the "
                                         "mask's extent padded by PAD pixels at model resolution (diffusers' "
                                         "padding_mask_crop) instead of a model-sized window."),
    textures: Path | None = typer.Option(None, "--textures", help="--model draem: texture images (default: the "
                                         "normals themselves)."),
    labeled: Path | None = typer.Option(None, "--labeled", help="--model copypaste, or a DDPM run (the "
                                        "harmonized transplant): the labeled set whose real defects (masks or "
                                        "boxes) are pasted, augmented, onto the normals (then re-drawn by the "
                                        "DDPM from --strength)."),
    blend: str | None = typer.Option(None, "--blend", help="--model copypaste or a transplant: paste (default) or "
                                     "seamless (Poisson blending)."),
    augment: str | None = typer.Option(None, "--augment", help="--model copypaste or a transplant: full (random "
                                       "zoom, rotation, warp, brightness; copypaste's default) or flips (the "
                                       "defect as recorded, mirrored; the transplant's default)."),
    keep_core: float | None = typer.Option(None, "--keep-core", help="Transplant: keep the pasted defect's own "
                                           "pixels in this share of its depth, blending to the DDPM's re-draw at "
                                           "its rim (1: a gradual blend over the whole depth; default: the DDPM "
                                           "re-draws the whole mask)."),
    filters: Filters = None, clip_model: ClipModel = None, tau0: Tau0 = 0.5, lam: Lam = 1.0,
    min_change: MinChange = 0.02, allow_empty: AllowEmpty = False,
    strength: float | None = typer.Option(None, "--strength", help="Unconditional DDPM: t0/T, how far the normal "
                                          "image is diffused (default 0.5)."),
    sigma: float | None = typer.Option(None, "--sigma", help="Unconditional DDPM: std of the extra noise inside "
                                       "the mask (default 1.0)."),
    guidance: float | None = typer.Option(None, "--guidance", help="Conditional: classifier-free guidance "
                                          "scale (default 3.0)."),
    sampler: str | None = typer.Option(None, "--sampler", help="ddpm, ddim or dpm (default ddim)."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Sampling steps (default ddpm 1000, ddim 50, "
                                     "dpm 20)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Samples per generator call."),
    device: Device = None,
    seed: int = typer.Option(0, "--seed", help="Sample i depends only on (seed, i)."),
    shard: str | None = typer.Option(None, "--shard", help="K/N: write only samples i with i % N == K into --out "
                                     "(set automatically under `accelerate launch`); the shard that completes "
                                     "the set writes annotations.json."),
    resume: bool = typer.Option(False, "--resume", help="Complete an interrupted run in --out."),
    overwrite: Overwrite = False,
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
    from defectgen.synth.run import synthesize_set

    run = synthesize_set(
        model, normals, n, out_dir, masks=masks, mask_preset=mask_preset, masks_from=masks_from,
        class_name=class_name, prompt=prompt, filters=names(filters), clip_model=clip_model, tau0=tau0, lam=lam,
        min_change=min_change, allow_empty=allow_empty, seed=seed, batch_size=batch_size,
        shard=parse_shard(shard), resume=resume,
        overwrite=overwrite, progress=True, note=say, log=out.print, sampler=sampler, steps=steps,
        strength=strength, sigma=sigma, guidance=guidance, negative_prompt=negative_prompt, mask_crop=mask_crop,
        textures=textures, labeled=labeled, blend=blend, augment=augment, keep_core=keep_core,
        device=device)
    if run.record is not None:
        record("set", run.out_dir, **run.record)


@app.command("masks")
def masks(
    out_dir: Path = typer.Option(..., "--out", help="Output folder: masks/*.png and annotations.json."),
    kind: str = typer.Option("perlin", "--kind", help="perlin or bbox."),
    n: int = typer.Option(16, "--n", min=1, help="How many masks."),
    size: str | None = typer.Option(None, "--size", help="Mask size HxW, e.g. 256x256."),
    like: Path | None = typer.Option(None, "--like", help="Take mask sizes (and foregrounds) from these images."),
    fmt: Fmt = "auto",
    preset: str | None = typer.Option(None, "--preset", help="A preset name "
                                         "(defectgen/data/masks/: perlin, perlin-small, perlin-large, bbox, "
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
    from defectgen.masks import mask_generator
    from defectgen.masks.writer import write_mask_set

    if (size is None) == (like is None):
        raise typer.BadParameter("give exactly one of --size HxW or --like DIR")
    generator = mask_generator(kind, seed=seed, preset=preset, shape=shape, min_area=min_area, max_area=max_area,
                               threshold=threshold, like_labeled=like_labeled, fmt=fmt)
    params = {"kind": kind, "n": n, "size": size, "like": str(like) if like else None, "preset": preset,
              "like_labeled": str(like_labeled) if like_labeled else None, "object_only": object_only, "seed": seed}
    summary = write_mask_set(
        out_dir, generator, n, size=parse_size(size) if size else None, like=like, like_format=fmt,
        object_only=object_only, category=category, params=params, overwrite=overwrite, on_bad=on_bad,
        protect=(like_labeled,),
    )
    out.print(f"wrote {summary['masks']} masks to {out_dir}/masks and {out_dir}/annotations.json "
              f"(area fraction median {summary['area_median']:.4f}, min {summary['area_min']:.4f}, "
              f"max {summary['area_max']:.4f})")
    if summary["skipped"]:
        out.print(f"skipped {summary['skipped']} unreadable image(s) in {like}")
