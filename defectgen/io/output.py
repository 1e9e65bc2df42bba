"""Output safety: output folders that are never an input and never cleared unless defectgen made them (atomic
writes and paths that stay inside their folder: io/files.py).

Rules every writer, mover and deleter follows (docs/safety.md):
- files are written to a temporary name and renamed, with the mode a plain write would get under the umask;
- a path taken from a file (a COCO `file_name`, `mask_file`) is resolved with `resolve_inside`, which refuses
  absolute paths, `..` and symbolic links that lead out of the folder;
- an output folder is never an input, the model, or a folder that contains or lies inside one of them (what is
  written inside an input folder would be read as input next time), and readers skip defectgen's own output
  folders when they walk an input tree (`io.images.image_files`);
- `--overwrite` clears only an empty folder or one holding defectgen's marker (`.defectgen-*.json`), and never
  the working folder;
- a run that fails or is interrupted before it wrote anything worth resuming removes the folder it created.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from defectgen.errors import DefectgenError
from defectgen.io.datasets import read_parts
from defectgen.io.files import MARKER, atomic_write_json, made_by_defectgen


def _write_marker(folder: Path, verb: str | None) -> None:
    if (folder / MARKER).is_file():
        return
    from defectgen import __version__

    atomic_write_json(folder / MARKER, {
        "made_by": "defectgen", "verb": verb, "version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "note": "defectgen may clear this folder with --overwrite; delete this file to protect it",
    })


def check_outside_inputs(path: str | Path, protect: Iterable[str | Path | None]) -> None:
    """Refuse an output path that is an input, contains one, or lies inside an input folder (whatever is written
    there would be read as input by the next run that walks that folder)."""
    path = Path(path)
    real = path.resolve()
    for p in protect:
        if p is None or not Path(p).exists():
            continue  # hub ids and names such as "draem" are not folders
        other = Path(p).resolve()
        if real == other or other.is_relative_to(real):
            relation = "is" if real == other else "contains"
            raise DefectgenError(path, f"output folder {relation} the input {p}; choose another `out_dir`")
        # a dataset root counts by the parts its reader walks (MVTec's train/ test/ ..., VOC's images/ ...), so a
        # workspace's runs/ and reports/ may sit beside them; any other folder is walked whole
        if other.is_dir() and any(real.is_relative_to(part) for part in read_parts(other)):
            raise DefectgenError(path, f"output folder lies inside the input folder {p}, where its files would "
                                 "become inputs; choose an `out_dir` outside it")


class OutputFolder:
    """One run's output folder. `prepare()` creates it and puts defectgen's marker in it. A non-empty folder is
    refused unless the user said --resume (continue in it; it must be one defectgen made) or --overwrite (clear
    it; only an empty folder or one defectgen made, never the working folder or home, and never one that is,
    contains or lies inside a path in `protect`: the run's inputs and model). `abandon()`, called
    when the run fails or is interrupted, removes what this run created unless `worth_keeping(folder)` says it
    holds progress that --resume can continue. A folder the run continued (--resume) is never removed, and a
    folder the user made stays (emptied of what this run put in it)."""

    def __init__(self, path: str | Path, *, overwrite: bool = False, resume: bool = False, resumable: bool = True,
                 protect: Iterable[str | Path | None] = (), verb: str | None = None,
                 worth_keeping: Callable[[Path], bool] | None = None):
        self.path = Path(path)
        self.overwrite, self.resume, self.resumable = overwrite, resume, resumable
        self.protect, self.verb, self.worth_keeping = tuple(protect), verb, worth_keeping
        self.fresh = False
        self._existed = False
        self._created_from: Path | None = None

    def prepare(self) -> Path:
        path = self.path
        if path.exists() and not path.is_dir():
            raise DefectgenError(path, "output path exists and is not a folder")
        non_empty = path.is_dir() and any(path.iterdir())
        clearing = non_empty and self.overwrite and not self.resume
        check_outside_inputs(path, self.protect)
        if non_empty and not (self.overwrite or self.resume):
            hint = "pass `overwrite` to replace it" + (" or `resume` to continue" if self.resumable else "")
            raise DefectgenError(path, f"output folder is not empty; {hint}")
        if non_empty and self.resume and not made_by_defectgen(path):
            raise DefectgenError(path, "this folder was not made by defectgen (no .defectgen-*.json marker "
                                 "inside); `resume` continues only defectgen's own runs")
        if clearing:
            real, cwd = path.resolve(), Path.cwd().resolve()
            if real in (Path.home().resolve(), Path(real.anchor)) or cwd.is_relative_to(real):
                raise DefectgenError(path, "refusing to clear the working folder, a folder that contains it, home "
                                     "or the root with `overwrite`; name a dedicated output folder")
            if path.is_symlink():
                raise DefectgenError(path, "output folder is a symbolic link; refusing to clear it with `overwrite`")
            if not made_by_defectgen(path):
                raise DefectgenError(path, "folder is not empty and was not made by defectgen (no "
                                     ".defectgen-*.json marker inside); `overwrite` clears only defectgen's own "
                                     "folders: delete it yourself or choose another `out_dir`")
            shutil.rmtree(path)
        self._existed = path.is_dir()
        self._created_from = _first_missing(path)
        self.fresh = not non_empty or clearing
        path.mkdir(parents=True, exist_ok=True)
        _write_marker(path, self.verb)
        return path

    def abandon(self) -> None:
        path = self.path
        if not self.fresh or not path.is_dir() or (self.worth_keeping is not None and self.worth_keeping(path)):
            return
        if self._existed:  # the user's (empty) folder stays; only what this run put in it goes
            for p in path.iterdir():
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
            return
        shutil.rmtree(path, ignore_errors=True)
        for p in path.parents if self._created_from is not None else ():
            if not p.is_relative_to(self._created_from):
                break
            with contextlib.suppress(OSError):
                p.rmdir()  # only while empty


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of `path` that does not exist yet (what mkdir(parents=True) will create)."""
    missing = None
    for p in [path, *path.parents]:
        if p.exists():
            break
        missing = p
    return missing


@contextlib.contextmanager
def output_folder(path: str | Path, **options: Any) -> Iterator[Path]:
    """OutputFolder as a context: prepared on entry, abandoned if the body fails or is interrupted."""
    folder = OutputFolder(path, **options)
    out = folder.prepare()
    try:
        yield out
    except BaseException:
        folder.abandon()
        raise


