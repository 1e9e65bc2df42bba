"""The workspace: what was trained, synthesized and validated in this folder, so commands can take sensible defaults.

An index file, `defectgen-workspace.json`, sits in the current folder beside the default output folders `runs/`,
`synth/` and `reports/`. Every training run, synthesized set and validation report is recorded there with its
inputs, parameters, creation time and key figures. The index is rewritten atomically under a file lock, so a killed
run or two processes at once never leave half an index behind. Defaults taken from it are always printed.

Per-workspace option defaults live in `defectgen.yaml` (or the file named by $DEFECTGEN_CONFIG): a mapping of verb
to option defaults, e.g. `train-ddpm: {preset: tiny, steps: 50}`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from defectgen.errors import DefectgenError
from defectgen.io.output import atomic_write_json

INDEX = "defectgen-workspace.json"
CONFIG = "defectgen.yaml"
KINDS = ("model", "set", "report")
DEFAULT_DIRS = {"model": "runs", "set": "synth", "report": "reports"}


def config_file(root: str | Path | None = None) -> Path:
    """The option-defaults file: $DEFECTGEN_CONFIG, else defectgen.yaml in `root` (the current folder)."""
    env = os.environ.get("DEFECTGEN_CONFIG")
    return Path(env) if env else Path(root or Path.cwd()) / CONFIG


def load_config(root: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Option defaults per verb, as click's default_map wants them (option names with '_' for '-'). The keys
    are checked against the verbs' options by the CLI, which knows them."""
    env = os.environ.get("DEFECTGEN_CONFIG")
    path = config_file(root)
    if not path.is_file():
        if env:
            raise DefectgenError(path, "DEFECTGEN_CONFIG names a file that does not exist")
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise DefectgenError(path, f"not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise DefectgenError(path, "expected a mapping of verb -> {option: value}")
    return {str(verb): {str(k).replace("-", "_"): v for k, v in opts.items()} for verb, opts in data.items()}


class Workspace:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root or Path.cwd()).resolve()
        self.path = self.root / INDEX

    @contextlib.contextmanager
    def _locked(self):
        lock = self.root / f".{INDEX}.lock"
        with open(lock, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise DefectgenError(self.path, "workspace index is not valid JSON; fix or delete it") from None
        return list(data.get("entries", []))

    def _relative(self, path: str | Path) -> str:
        p = Path(path).resolve()
        try:
            return str(p.relative_to(self.root))
        except ValueError:
            return str(p)

    def absolute(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else self.root / p

    def record(self, kind: str, path: str | Path, *, type: str, inputs: dict[str, Any] | None = None,
               params: dict[str, Any] | None = None, figures: dict[str, Any] | None = None) -> dict[str, Any]:
        """Add (or replace, for the same path) an entry; written atomically under the lock."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        entry = {
            "kind": kind, "type": type, "path": self._relative(path),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "inputs": {k: (self._relative(v) if isinstance(v, (str, Path)) and Path(v).exists() else v)
                       for k, v in (inputs or {}).items()},
            "params": params or {}, "figures": figures or {},
        }
        entry = json.loads(json.dumps(entry, default=str))
        with self._locked():
            entries = [e for e in self.entries() if e["path"] != entry["path"]]
            entries.append(entry)
            atomic_write_json(self.path, {"version": 1, "entries": entries})
        return entry

    def latest(self, kind: str, types: tuple[str, ...] | None = None) -> dict[str, Any] | None:
        """The most recent entry of `kind` (and one of `types`) whose folder still exists."""
        for e in reversed(self.entries()):
            if e["kind"] == kind and (types is None or e["type"] in types) and self.absolute(e["path"]).exists():
                return e
        return None

    def new_output(self, kind: str, stem: str) -> Path:
        """A fresh folder name under the default folder of `kind`: runs/ddpm-1, runs/ddpm-2, ... (relative to the
        workspace when it is the current folder, as people type paths)."""
        base = self.root / DEFAULT_DIRS[kind]
        i = 1
        while (base / f"{stem}-{i}").exists():
            i += 1
        path = base / f"{stem}-{i}"
        return path.relative_to(Path.cwd().resolve()) if self.root == Path.cwd().resolve() else path
