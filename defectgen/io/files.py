"""File-level safety: atomic writes, paths taken from files that must stay inside their folder, defectgen's marker,
and the temporaries a killed write leaves. The bottom of io/: it imports nothing else of defectgen but errors, so
every reader and writer can use it (output folders, which also need the dataset readers, are in io/output.py).
Rules: docs/safety.md.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from defectgen.errors import DefectgenError

MARKER = ".defectgen-output.json"  # written into every output folder; any `.defectgen-*.json` counts as one
_MARKER_GLOB = ".defectgen-*.json"


def _file_mode() -> int:
    """The mode open() would give a new file under the current umask (mkstemp always makes 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: a killed run never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), _file_mode())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


# ---- paths taken from files ---------------------------------------------------------------------------------------

def is_within(path: str | Path, root: str | Path) -> bool:
    """True when `path` is `root` or lies inside it, after resolving symbolic links and `..`."""
    return Path(path).resolve().is_relative_to(Path(root).resolve())


def resolve_inside(root: str | Path, relative: str | Path, *, source: str | Path | None = None,
                   what: str = "path") -> Path:
    """`root / relative`, refusing an absolute path, `..` that climbs out, or a symbolic link that points out of
    `root`: every path defectgen moves, renames or deletes goes through here. `source` is the file the path was
    read from (named in the error)."""
    text = str(relative)
    if not text or Path(text).is_absolute():
        raise DefectgenError(source or root, f"{what} {text!r} is not a path relative to {root}; refusing to "
                             "touch files outside the folder")
    candidate = Path(root) / text
    if not is_within(candidate, root):
        raise DefectgenError(source or root, f"{what} {text!r} leads outside {root} (through '..' or a symbolic "
                             "link); refusing to touch it")
    return candidate


def made_by_defectgen(folder: str | Path) -> bool:
    """A folder defectgen made holds its marker (older versions: a `.defectgen-*.json` settings file)."""
    return any(p.is_file() and not p.is_symlink() for p in Path(folder).glob(_MARKER_GLOB))


def remove_stale_temporaries(folder: str | Path, subfolders: Iterable[str] = ("", "images", "masks")) -> int:
    """Delete the `.name.*.tmp` files a killed atomic write left in `folder` and its `subfolders` (used by
    --resume); returns how many. Only regular files directly inside those folders are touched."""
    n = 0
    for sub in subfolders:
        d = Path(folder) / sub
        if not d.is_dir() or d.is_symlink():
            continue
        for p in d.glob(".*.tmp"):
            if p.is_file() and not p.is_symlink():
                p.unlink(missing_ok=True)
                n += 1
    return n
