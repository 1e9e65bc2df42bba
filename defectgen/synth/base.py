"""The contract every defect generator meets, so that all of them share one pipeline and one output format; the
abilities a generator declares on its class (`Abilities`); and the registry `load_generator` resolves --model
through (like the detectors' `register_detector`)."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from defectgen.diffusion.folder import has_metadata, metadata_path, read_metadata
from defectgen.errors import DefectgenError


@runtime_checkable
class DefectGenerator(Protocol):
    """Paints defects inside masks.

    name:       short id written into the COCO info block ("ddpm", "cddpm", "ldm", "draem").
    resolution: the side the model works at, or None if any size works. The pipeline generates larger images in
                a crop around the mask and pastes the result back: at least `context` (an optional attribute,
                default 1) times `resolution` native pixels wide, resized to the model.
    channels:   1 or 3 if the generator needs that many (a DDPM trained on gray data), else None.

    What it does beyond this it declares as `abilities` (`Abilities`, below); without them it is plain.
    """

    name: str
    resolution: int | None
    channels: int | None

    def info(self) -> dict[str, Any]:
        """Parameters to record in annotations.json (model path, sampler, steps, strength, ...)."""
        ...

    def generate(
        self, normals: list[np.ndarray], masks: list[np.ndarray], seeds: list[int], class_names: list[str | None],
    ) -> list[np.ndarray]:
        """normals: H x W x C float32 in [0, 1]; masks: H x W bool; one seed per sample (the result for a sample
        depends only on its seed, not on the batch it is in). Returns float32 arrays of the same shapes. The
        pipeline itself restores the pixels outside each mask bit-exactly, so generators need not."""
        ...


@dataclass(frozen=True)
class Abilities:
    """What a generator does besides painting inside the masks it is given, declared on its class as `abilities`.

    makes_own_masks:    it pastes real defects, so the masks are theirs: the generator is the `MaskSource` of its
                        samples (masks/source.py) and takes no other masks (copypaste, the transplant).
    conditional:        it paints the class it is given: `check_class(name)` refuses a class it cannot paint, and
                        `class_distribution` (or None) is what a sample's class is drawn from when none is given.
    takes_prompt:       it reads the prompt's text (the text-guided LDM).
    prompt_names_class: without a class, the defect a prompt names (prompts.py: `prompt_class`) is the samples'
                        class.
    """

    makes_own_masks: bool = False
    conditional: bool = False
    takes_prompt: bool = False
    prompt_names_class: bool = False


PLAIN = Abilities()  # paints inside the masks it is given, and nothing more


def abilities(generator: DefectGenerator) -> Abilities:
    """What `generator` declares it can do; a generator that declares nothing (the protocol asks for no more) is
    plain."""
    return getattr(generator, "abilities", PLAIN)


# ---- the registry: --model NAME or a model folder -> a generator ------------------------------------------------

Factory = Callable[..., DefectGenerator]

# Generators without a model folder, by the name given as --model; the built-in ones register themselves when
# their module is imported (see _BUILTIN). A factory is called as factory(name, **options).
GENERATORS: dict[str, Factory] = {}
# Generators of model folders, by the "kind" their defectgen.json records: "module:callable" (imported when used)
# or a callable, called as factory(folder, **options).
MODEL_KINDS: dict[str, str | Factory] = {
    "ddpm": "defectgen.synth.transplant:ddpm_generator",  # with `labeled`: the harmonized transplant
    "cddpm": "defectgen.synth.transplant:ddpm_generator",
    "ldm": "defectgen.synth.ldm_generator:LdmGenerator",
}
_BUILTIN = ("defectgen.synth.draem", "defectgen.synth.copypaste")


def register_generator(name: str, factory: Factory | str | None = None, *, kind: bool = False):
    """Make a generator factory available as `--model NAME` (or, with kind=True, for model folders whose
    defectgen.json says kind NAME). A decorator (`@register_generator("draem")`) or a call with the factory."""

    def deco(f):
        (MODEL_KINDS if kind else GENERATORS)[name] = f
        return f

    return deco if factory is None else deco(factory)


def _builtin() -> None:
    for module in _BUILTIN:
        importlib.import_module(module)


def generator_names() -> list[str]:
    """The names --model takes besides a model folder."""
    _builtin()
    return sorted(GENERATORS)


def get_generator(name: str) -> Factory:
    """The factory registered as `name`."""
    _builtin()
    if name not in GENERATORS:
        raise DefectgenError(None, f"unknown generator {name!r}; choose from {', '.join(sorted(GENERATORS))}")
    return GENERATORS[name]


def _resolve(factory: str | Factory) -> Factory:
    if callable(factory):
        return factory
    module, _, attr = factory.partition(":")
    return getattr(importlib.import_module(module), attr)


def load_generator(model: str | Path, **options: Any) -> DefectGenerator:
    """The generator for `model`: a registered name (draem, copypaste, ...), or a model folder whose
    defectgen.json names its kind. Options that are None are dropped, so factories keep their own defaults."""
    options = {k: v for k, v in options.items() if v is not None}
    name = str(model)
    if name in generator_names():
        return get_generator(name)(name, **options)
    path = Path(model)
    if _is_foreign_inpainting_model(path):  # a diffusers inpainting folder or hub id not trained here
        return _resolve(MODEL_KINDS["ldm"])(name, **options)
    if not path.exists():
        raise DefectgenError(None, f"no model folder {path} (and not a generator name: "
                             f"{', '.join(generator_names())})")
    kind = read_metadata(path).get("kind")  # one-line errors for a missing or corrupt defectgen.json
    if kind not in MODEL_KINDS:
        known = ", ".join(sorted(MODEL_KINDS))
        raise DefectgenError(metadata_path(path), f"unknown model kind {kind!r}; known: {known}")
    return _resolve(MODEL_KINDS[kind])(path, **options)


def _is_foreign_inpainting_model(path: Path) -> bool:
    """A local diffusers pipeline folder without defectgen.json, or something shaped like a hub id (owner/name)
    that is not a local path: both go to the text-guided generator, which loads them with from_pretrained."""
    if path.exists():
        index = path / "model_index.json"
        if has_metadata(path) or not index.is_file():
            return False
        try:
            return "Inpaint" in json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
        except (json.JSONDecodeError, AttributeError):
            return False
    parts = str(path).split("/")
    # `runs/nosuch` beside an existing runs/ folder is a mistyped local path, not a hub id
    return (len(parts) == 2 and all(parts) and not str(path).startswith((".", "~"))
            and not Path(parts[0]).is_dir())
