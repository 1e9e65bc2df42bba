"""The model-folder contract: every model defectgen trains is a diffusers pipeline folder (model_index.json and
one subfolder per component) with `defectgen.json` beside it: kind, resolution, classes, training record, version.

This module is the one reader and the one writer of `defectgen.json`. It imports neither torch nor diffusers, so
anything that only needs a model's metadata (the CLI, the generator registry) stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from defectgen.errors import DefectgenError
from defectgen.io.files import atomic_write_json

METADATA_FILE = "defectgen.json"
PIPELINE_INDEX = "model_index.json"  # written by diffusers' save_pretrained


def metadata_path(folder: str | Path) -> Path:
    return Path(folder) / METADATA_FILE


def has_metadata(folder: str | Path) -> bool:
    return metadata_path(folder).is_file()


def read_metadata(folder: str | Path, *, required: bool = True) -> dict[str, Any]:
    """The folder's defectgen.json as a dict. A missing folder or file is a DefectgenError naming it, or {} when
    not `required` (a diffusers folder trained elsewhere); an unreadable, corrupt or non-object file is always a
    one-line DefectgenError naming the file."""
    folder = Path(folder)
    path = metadata_path(folder)
    if not path.is_file():
        if not required:
            return {}
        if not folder.is_dir():
            raise DefectgenError(folder, "model folder not found")
        raise DefectgenError(folder, f"not a defectgen model: no {METADATA_FILE} in this folder")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DefectgenError(path, f"not valid JSON ({_one_line(e)})") from None
    except OSError as e:
        raise DefectgenError(path, f"cannot be read ({_one_line(e)})") from None
    if not isinstance(meta, dict):
        raise DefectgenError(path, f"expected a JSON object, found {type(meta).__name__}")
    return meta


def write_metadata(folder: str | Path, meta: dict[str, Any]) -> Path:
    """Write defectgen.json atomically (after the model files: a folder with metadata is complete)."""
    path = metadata_path(folder)
    atomic_write_json(path, meta)
    return path


def update_metadata(folder: str | Path, fields: dict[str, Any]) -> dict[str, Any]:
    """Merge `fields` into the folder's defectgen.json (which must exist) and return the result."""
    meta = {**read_metadata(folder), **fields}
    write_metadata(folder, meta)
    return meta


def _one_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__
