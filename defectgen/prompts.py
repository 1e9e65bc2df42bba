"""The prompt library: materials x defect types -> prompt templates (YAML files in the top-level prompts/, packaged
as defectgen/data/prompts/)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import yaml

from defectgen.errors import DefectgenError

# Inside the package, so editable installs and wheels both carry the library.
PROMPT_DIR = resources.files("defectgen") / "data" / "prompts"
GENERIC_CLASS = "defect"


@dataclass
class Material:
    name: str
    normal: str
    negative: str = ""
    defects: dict[str, list[str]] = field(default_factory=dict)
    path: Path | None = None

    def caption(self, defect: str, rng: np.random.Generator | None = None) -> str:
        """A prompt for `defect`: one of its templates (drawn with rng, else the first), or a generic sentence."""
        templates = self.defects.get(defect)
        if not templates:
            return f"a photo of a {self.name} surface with {defect.replace('_', ' ')} defect"
        return templates[int(rng.integers(len(templates)))] if rng is not None else templates[0]


@dataclass
class ResolvedPrompt:
    prompt: str
    negative: str
    class_name: str
    material: Material | None


def load_material(path: str | Path) -> Material:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DefectgenError(path, "prompt file not found") from None
    except yaml.YAMLError as e:
        raise DefectgenError(path, f"not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("defects"), dict) or not data["defects"]:
        raise DefectgenError(path, "a prompt file needs 'material' and a non-empty 'defects' mapping")
    name = str(data.get("material") or path.stem)
    defects = {}
    for defect, templates in data["defects"].items():
        templates = [templates] if isinstance(templates, str) else list(templates or [])
        if not templates or not all(isinstance(t, str) and t.strip() for t in templates):
            raise DefectgenError(path, f"defect {defect!r} needs one or more non-empty prompt templates")
        defects[str(defect)] = templates
    return Material(name, str(data.get("normal") or f"a photo of a normal {name} surface"),
                    str(data.get("negative") or ""), defects, path)


def load_library(folder: str | Path = PROMPT_DIR) -> dict[str, Material]:
    """Every *.yaml in `folder` by material name."""
    folder = Path(folder)
    files = sorted(folder.glob("*.yaml")) if folder.is_dir() else []
    if not files:
        raise DefectgenError(folder, "prompt library is empty: no *.yaml prompt files here")
    return {m.name: m for m in map(load_material, files)}


def resolve_prompt(text: str, library: dict[str, Material] | None = None, rng: np.random.Generator | None = None,
                   class_name: str | None = None) -> ResolvedPrompt:
    """`material/defect` -> a template from the library; anything else is free text. The class is the defect
    name (library prompts), `class_name` if given, or the longest library defect name the free text contains."""
    text = (text or "").strip()
    if not text:
        raise DefectgenError(None, "empty prompt")
    library = library if library is not None else load_library()
    match = re.fullmatch(r"([\w-]+)/([\w-]+)", text)
    if match:
        material_name, defect = match.groups()
        material = library.get(material_name)
        if material is None:
            known = ", ".join(sorted(library))
            raise DefectgenError(PROMPT_DIR, f"unknown prompt material {material_name!r}; known: {known}")
        if defect not in material.defects:
            raise DefectgenError(material.path, f"unknown defect {defect!r} for {material_name}; known: "
                                 f"{', '.join(sorted(material.defects))}")
        return ResolvedPrompt(material.caption(defect, rng), material.negative, class_name or defect, material)
    lowered = text.lower()
    found = sorted(((d, m) for m in library.values() for d in m.defects
                    if re.search(rf"\b{re.escape(d.replace('_', ' '))}\b", lowered)), key=lambda dm: -len(dm[0]))
    material = next((m for m in library.values() if re.search(rf"\b{re.escape(m.name)}\b", lowered)), None)
    if found:
        material = material or found[0][1]
    return ResolvedPrompt(text, material.negative if material else "", class_name or (found[0][0] if found else
                          GENERIC_CLASS), material)


def prompt_material(text: str | None, library: dict[str, Material] | None = None) -> str | None:
    """The material a prompt names (`tile/crack`, or free text mentioning a library material), if any."""
    if not text:
        return None
    material = resolve_prompt(text, library).material
    return material.name if material else None


def prompt_class(text: str, library: dict[str, Material] | None = None) -> str:
    """The defect class a prompt names (for models that cannot read text): the library defect, else 'defect'."""
    return resolve_prompt(text, library).class_name
