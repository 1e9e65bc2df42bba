"""A package that installs whole: the wheel carries the presets and the prompt library (defectgen/data/), and an
install from it (no repository, no editable finder) runs `defectgen masks --preset` and resolves library prompts."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(args: list, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_wheel_carries_presets_and_prompt_library(tmp_path):
    # A clean env: nothing that would put the repository (or a parent venv) in front of the installed wheel.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PYTHONNOUSERSITE="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", OMP_NUM_THREADS="1")

    # Build from a copy of the sources, so the in-tree build (build/, *.egg-info) leaves the checkout alone and no
    # stale build/ of the checkout can slip files into the wheel.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "defectgen", src / "defectgen", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, src],
         tmp_path, env)
    wheels = sorted(dist.glob("defectgen-*.whl"))
    assert len(wheels) == 1, wheels
    names = set(zipfile.ZipFile(wheels[0]).namelist())
    for data in ("masks/perlin-small.yaml", "masks/bbox.yaml", "prompts/tile.yaml", "prompts/steel.yaml",
                 "prompts/README.md"):
        assert f"defectgen/data/{data}" in names, sorted(n for n in names if "/data/" in n)

    # A fresh venv gets the wheel first; only then the current interpreter's site-packages (torch and the other
    # dependencies) through a .pth file. Its lines are appended after the venv's own site-packages, so the wheel's
    # defectgen wins, and the .pth files there (the editable finder of a `pip install -e .`) are not processed.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], tmp_path, env)
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    vpy = bindir / ("python.exe" if os.name == "nt" else "python")
    _run([vpy, "-m", "pip", "install", "--no-deps", "-q", wheels[0]], tmp_path, env)
    vsite = Path(_run([vpy, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path,
                      env).stdout.strip())
    paths = sysconfig.get_paths()
    parents = dict.fromkeys([*site.getsitepackages(), paths["purelib"], paths["platlib"]])
    (vsite / "zz_parent_site.pth").write_text("".join(f"{p}\n" for p in parents if Path(p).is_dir()))

    work = tmp_path / "work"  # cwd holds no defectgen/ folder
    work.mkdir()
    probe = "\n".join((
        "import json, defectgen, defectgen.masks as m, defectgen.prompts as p",
        "r = p.resolve_prompt('tile/crack')",
        "print(json.dumps({'module': defectgen.__file__, 'presets': str(m.PRESET_DIR), 'prompts': str(p.PROMPT_DIR),",
        "                  'material': str(r.material.path), 'prompt': r.prompt, 'class': r.class_name,",
        "                  'templates': r.material.defects['crack'], 'kind': m.load_preset('perlin-small')[0]}))",
    ))
    info = json.loads(_run([vpy, "-c", probe], work, env).stdout.strip().splitlines()[-1])
    for key in ("module", "presets", "prompts", "material"):
        assert Path(info[key]).resolve().is_relative_to(vsite.resolve()), (key, info[key], vsite)
    assert info["class"] == "crack" and info["prompt"] in info["templates"] and info["kind"] == "perlin"

    out = tmp_path / "m"
    _run([bindir / "defectgen", "masks", "--preset", "perlin-small", "--size", "32x32", "--n", "2", "--out", out],
         work, env)
    assert sorted(p.name for p in (out / "masks").glob("*.png")) == ["000000.png", "000001.png"]
    coco = json.loads((out / "annotations.json").read_text())
    assert len(coco["images"]) == 2
