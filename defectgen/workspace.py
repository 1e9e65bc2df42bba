"""The workspace: what was trained, synthesized and validated in this folder, so commands can take sensible defaults.

An index file, `defectgen-workspace.json`, sits in the current folder beside the default output folders `runs/`,
`synth/` and `reports/`. Every training run, synthesized set and validation report is recorded there with its
inputs, parameters, creation time and key figures. The index is rewritten atomically under a lock on the folder, so a
killed run or two processes at once never leave half an index behind. Defaults taken from it are always printed.

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
from defectgen.io.files import atomic_write_json

INDEX = "defectgen-workspace.json"
CONFIG = "defectgen.yaml"
KINDS = ("model", "set", "report")
ALL_VERBS = "*"  # load_config's key for options set once for every verb that has them
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
    if not isinstance(data, dict):
        raise DefectgenError(path, "expected a mapping of verb -> {option: value} (and option: value for all verbs)")
    config = {str(verb): {str(k).replace("-", "_"): v for k, v in opts.items()}
              for verb, opts in data.items() if isinstance(opts, dict)}
    shared = {str(k).replace("-", "_"): v for k, v in data.items() if not isinstance(v, dict)}
    if shared:  # `backbone: FOLDER` at the top: the default of every verb that has that option
        config[ALL_VERBS] = shared
    return config


# ---- the entries: one function per kind, so every verb records (and `figures_text` reads) the same fields -------

REPORT_FIGURES = ("image_auroc", "pixel_auroc", "aupro")


def model_record(type: str, inputs: dict[str, Any], params: dict[str, Any], *, final_loss: float | None,
                 classes: list[str] | None) -> dict[str, Any]:
    """A trained model (train-ddpm, train-ldm): its figures are the steps (from `params`), the final loss and the
    classes."""
    return {"kind": "model", "type": type, "inputs": inputs, "params": params,
            "figures": {"steps": params["steps"], "final_loss": final_loss, "classes": classes}}


def set_record(type: str, inputs: dict[str, Any], params: dict[str, Any], *, n: int, annotations: int,
               kept: int | None = None, removed: dict[str, int] | None = None) -> dict[str, Any]:
    """A synthesized set: samples asked for and annotations written, and what the filters kept and removed."""
    figures = {"n": n, "annotations": annotations}
    if kept is not None:
        figures.update(kept=kept, removed=removed)
    return {"kind": "set", "type": type, "inputs": inputs, "params": params, "figures": figures}


def report_record(detector: str, runs: dict[str, Any], inputs: dict[str, Any],
                  params: dict[str, Any]) -> dict[str, Any]:
    """A validation report: each run's headline metrics (`REPORT_FIGURES`)."""
    figures = {name: {k: run["metrics"].get(k) for k in REPORT_FIGURES} for name, run in runs.items()}
    return {"kind": "report", "type": detector, "inputs": inputs, "params": params, "figures": figures}


class Workspace:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root or Path.cwd()).resolve()
        self.path = self.root / INDEX

    @contextlib.contextmanager
    def _locked(self):
        """An exclusive lock on the workspace folder itself (flock on its descriptor): no lock file to leave
        behind, and the index can still be replaced atomically while it is held."""
        fd = os.open(self.root, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

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


# ---- defaults taken from the workspace --------------------------------------------------------------------------
# Each function takes the workspace and the values given (None: not given) and returns the resolved values plus the
# notes to show, one line per default taken. Errors and notes name the parameters in backticks (`normals`); the
# command line shows its flags there instead.

def note(what: str, value: object, why: str) -> str:
    """The line that says a default was taken: `using model runs/ddpm-1 (most recent DDPM in the workspace)`."""
    return f"using {what} {value} ({why})"


def output_folder(ws: Workspace, out_dir: str | Path | None, kind: str, stem: str,
                  resume: bool = False) -> tuple[Path, list[str]]:
    """`out_dir` as given, or a fresh folder under the workspace's default folder for `kind`."""
    if out_dir is not None:
        return Path(out_dir), []
    if resume:
        raise DefectgenError(None, "`resume` needs `out_dir` (the folder to continue)")
    out_dir = ws.new_output(kind, stem)
    return out_dir, [note("output folder", out_dir, "no `out_dir` given")]


def synthesize_defaults(ws: Workspace, model: str | None, normals: str | Path | None,
                        prompt: str | None = None) -> tuple[str, Path, list[str]]:
    """The model (the most recent text-guided one for a prompt, else the most recent DDPM) and the normal images
    (those the model was trained with)."""
    notes = []
    if model is None:
        entry = ws.latest("model", ("ldm",)) if prompt else None
        why = "most recent text-guided model in the workspace"
        if entry is None:
            entry = ws.latest("model", ("ddpm", "cddpm"))
            why = "most recent DDPM in the workspace" + ("; there is no text-guided model" if prompt else "")
        if entry is None:
            raise DefectgenError(ws.path, "no `model` given and the workspace has no trained model; give `model` "
                                 "(a model folder, a diffusers inpainting model or draem) or run `defectgen "
                                 "train-ddpm` first")
        model = str(ws.absolute(entry["path"]))
        notes.append(note("model", entry["path"], why))
    if normals is None:
        from defectgen.diffusion.folder import read_metadata  # no torch import just to read a JSON file

        meta = read_metadata(model, required=False)
        trained_on = (meta.get("data") or {}).get("normals")
        if not trained_on:
            raise DefectgenError(None, f"no `normals` given and {model} records no normal images it was trained "
                                 "with; give `normals`")
        normals = Path(trained_on)
        notes.append(note("normals", normals, f"what {Path(model).name} was trained with"))
    return model, Path(normals), notes


def validate_defaults(ws: Workspace, detector: str, synthetic: list[str | Path] | None, train: str | Path | None,
                      test: str | Path | None, out_dir: str | Path | None
                      ) -> tuple[list[Path] | None, Path | None, Path, Path, list[str]]:
    """(synthetic, train, test, out_dir, notes): the most recent synthesized set (synthetic ['none']: none), the
    normals it was painted on (train 'none': none, for a test set without normal images), the MVTec test set
    beside train/good, and a fresh report folder."""
    notes: list[str] = []
    set_entry = None
    if synthetic and [str(p) for p in synthetic] == ["none"]:  # baselines only, whatever the workspace holds
        synthetic = None
    elif not synthetic:
        synthetic = None
        set_entry = ws.latest("set")
        if set_entry is not None:
            synthetic = [ws.absolute(set_entry["path"])]
            notes.append(note("synthetic set", set_entry["path"], "most recent synthesized set in the workspace"))
    else:
        synthetic = [Path(p) for p in synthetic]
        resolved = synthetic[0].resolve()
        set_entry = next((e for e in reversed(ws.entries()) if e["kind"] == "set"
                          and ws.absolute(e["path"]).resolve() == resolved), None)
    if train is not None and str(train) == "none":  # a dataset without normal images (seg only)
        if test is None:
            raise DefectgenError(None, "`train` none needs `test`")
        train = None
    else:
        if train is None:
            normals = (set_entry or {}).get("inputs", {}).get("normals")
            if not normals:
                raise DefectgenError(None, "no `train` given and no synthesized set in the workspace records its "
                                     "normals; give `train`")
            train = ws.absolute(normals)
            notes.append(note("normals", normals, "those the synthetic set was painted on"))
        if test is None:
            test, why = find_test_beside(Path(train))
            if test is None:
                raise DefectgenError(None, f"no `test` given and there is no test/ with ground_truth/ beside {train} "
                                     "(as in good/, test/, ground_truth/ side by side, or MVTec's train/good); give "
                                     "`test`")
            notes.append(note("test set", test / "test", why))
    out_dir, more = output_folder(ws, out_dir, "report", detector)
    return synthetic, None if train is None else Path(train), Path(test), out_dir, notes + more


def find_test_beside(train: Path) -> tuple[Path | None, str]:
    """The folder holding test/ and ground_truth/ that goes with the normals `train`, and how it was found: MVTec's
    root above train/good, `train` itself when it is such a root, or the folder that holds `train` beside test/
    and ground_truth/ (good/, test/, ground_truth/ side by side, the layout most people make)."""
    path = Path(train).resolve()
    candidates = [(path, "MVTec test/ in the normals folder")]
    if path.parts[-2:] == ("train", "good"):
        candidates.insert(0, (path.parent.parent, "MVTec test/ beside the normals' train/good"))
    else:
        candidates.append((path.parent, f"test/ beside the normals folder {path.name}/"))
    for candidate, why in candidates:
        if (candidate / "test").is_dir() and (candidate / "ground_truth").is_dir():
            here = Path.cwd().resolve()  # said as the user would type it: relative inside the working folder
            return (Path(os.path.relpath(candidate, here)) if candidate.is_relative_to(here) else candidate), why
    return None, ""


def figures_text(entry: dict[str, Any]) -> str:
    """An index entry's key figures in one line (`defectgen runs`)."""
    f = entry.get("figures", {})
    if entry["kind"] == "model":
        loss = f.get("final_loss")
        return f"{f.get('steps')} steps, loss {loss:.4f}" if loss is not None else f"{f.get('steps')} steps"
    if entry["kind"] == "set":
        text = f"{f.get('n')} samples, {f.get('annotations')} annotations"
        if "kept" in f:
            text += f", kept {f['kept']} (removed {', '.join(f'{k} {v}' for k, v in f['removed'].items())})"
        return text

    def fmt(v):
        return "-" if v is None else f"{v:.3f}"

    return "; ".join(f"{name}: I {fmt(m.get('image_auroc'))} / P {fmt(m.get('pixel_auroc'))} / "
                     f"PRO {fmt(m.get('aupro'))}" for name, m in f.items())
