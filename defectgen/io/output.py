"""Output safety: atomic writes and output folders that are never clobbered by accident."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from defectgen.errors import DefectgenError


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: a killed run never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def prepare_output_dir(path: str | Path, *, overwrite: bool = False, resume: bool = False,
                       resumable: bool = True) -> Path:
    """Create `path`, refusing a non-empty folder unless the user said --overwrite (clear it) or --resume (keep it)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DefectgenError(path, "output path exists and is not a folder")
    non_empty = path.is_dir() and any(path.iterdir())
    if non_empty and not (overwrite or resume):
        hint = "pass --overwrite to replace it" + (" or --resume to continue" if resumable else "")
        raise DefectgenError(path, f"output folder is not empty; {hint}")
    if non_empty and overwrite and not resume:
        resolved = path.resolve()
        if resolved in (Path.cwd().resolve(), Path.home().resolve(), Path(resolved.anchor)):
            raise DefectgenError(path, "refusing to clear this folder with --overwrite; name a dedicated output folder")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def remove_stale_temporaries(folder: str | Path) -> int:
    """Delete the `.name.*.tmp` files a killed run left behind (used by --resume); returns how many."""
    n = 0
    for p in Path(folder).rglob(".*.tmp"):
        p.unlink(missing_ok=True)
        n += 1
    return n
