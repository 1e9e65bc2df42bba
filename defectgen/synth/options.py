"""The options of one synthesis run as one record: `SynthesisOptions`, which `defectgen synthesize` builds from
its flags and the library passes on whole (synth/run.py: `synthesize_set`, synth/pipeline.py: `synthesize`), with
the generator's options (`GeneratorOptions`, for `load_generator`) and the filters' (`FilterOptions`, also what
`defectgen filter` builds). No heavy imports: the command line builds these before anything loads."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from defectgen.masks.source import MaskSource


@dataclass(frozen=True)
class GeneratorOptions:
    """What `load_generator` passes to the generator's factory; None keeps the factory's own default, and a
    factory ignores the options that are not its own.

    sampler, steps:        ddpm, ddim or dpm and its steps (diffusion models).
    strength, sigma:       how far the normal is diffused, extra noise inside the mask (unconditional DDPM; the
                           transplant's strength).
    guidance:              classifier-free guidance scale (conditional DDPM, LDM).
    negative_prompt:       text-guided models (default: the prompt library's).
    mask_crop:             text-guided models: generate in the mask's extent padded by this many pixels.
    textures:              draem: texture images (default: the normals themselves).
    labeled:               copypaste, or a DDPM (the harmonized transplant): the labeled set whose defects are pasted.
    blend, augment:        copypaste and the transplant: paste or seamless; full or flips.
    keep_core:             the transplant: share of the pasted defect's depth it keeps.
    device:                cuda, cuda:1, cpu, ... (default: a GPU if there is one).
    """

    sampler: str | None = None
    steps: int | None = None
    strength: float | None = None
    sigma: float | None = None
    guidance: float | None = None
    negative_prompt: str | None = None
    mask_crop: int | None = None
    textures: str | Path | None = None
    labeled: str | Path | None = None
    blend: str | None = None
    augment: str | None = None
    keep_core: float | None = None
    device: str | None = None

    def given(self) -> dict[str, Any]:
        """The options that were given (not None), as keyword arguments."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class FilterOptions:
    """The filters run over a synthesized set (synth/filters.py) and their settings.

    names: change, clip (none: no filtering). clip_model: the CLIP folder or hub id; tau0 and lam: its threshold
    tau_t = tau0 * exp(-lam * t / T); material: the material named in its normal text (default: the one the
    prompt names). min_change: the change filter's least mean absolute change inside the mask. allow_empty: let the
    filters remove every sample (otherwise an error that changes nothing).
    """

    names: tuple[str, ...] = ()
    clip_model: str | None = None
    tau0: float = 0.5
    lam: float = 1.0
    min_change: float = 0.02
    material: str | None = None
    allow_empty: bool = False


@dataclass(frozen=True)
class SynthesisOptions:
    """How a synthesis run makes its samples (the inputs, model, normals, n and output, are given beside it).

    masks:       perlin, bbox, a folder of masks, or a `MaskSource` (masks/source.py); mask_preset: a preset for
                 perlin or bbox; masks_from: instead, the masks of the real defects in this labeled set.
                 A generator that makes its own masks (copypaste, the transplant) takes none of these.
    class_name:  the samples' class (default: drawn from the generator's classes, or named by the prompt).
    prompt:      text-guided models: free text or material/defect from the prompt library.
    seed:        sample i depends only on (seed, i). batch_size: samples per generator call.
    shard:       (k, K): write only samples i with i % K == k. resume: complete an interrupted run; overwrite:
                 clear a folder defectgen made first. progress: show a progress bar.
    generator:   the generator's options; filters: the filters run over the finished set.
    """

    masks: str | Path | MaskSource = "perlin"
    mask_preset: str | None = None
    masks_from: str | Path | None = None
    class_name: str | None = None
    prompt: str | None = None
    seed: int = 0
    batch_size: int = 8
    shard: tuple[int, int] | None = None
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    generator: GeneratorOptions = field(default_factory=GeneratorOptions)
    filters: FilterOptions = field(default_factory=FilterOptions)
