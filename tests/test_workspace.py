"""The workspace index: records, latest-of-kind, atomic rewrites, per-workspace option defaults."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from defectgen.errors import DefectgenError
from defectgen.workspace import INDEX, Workspace, load_config


def _record_many(root: str, tag: str, n: int) -> None:
    ws = Workspace(root)
    for i in range(n):
        (ws.root / "synth" / f"{tag}{i}").mkdir(parents=True, exist_ok=True)
        ws.record("set", ws.root / "synth" / f"{tag}{i}", type="ddpm", figures={"n": i})


def test_record_and_latest(tmp_path):
    ws = Workspace(tmp_path)
    for name, type_ in (("ddpm-1", "ddpm"), ("ldm-1", "ldm"), ("ddpm-2", "ddpm")):
        (tmp_path / "runs" / name).mkdir(parents=True)
        ws.record("model", tmp_path / "runs" / name, type=type_, inputs={"normals": str(tmp_path)})
    assert ws.latest("model")["path"] == "runs/ddpm-2"
    assert ws.latest("model", ("ldm",))["path"] == "runs/ldm-1"
    assert ws.latest("set") is None
    (tmp_path / "runs" / "ddpm-2").rmdir()  # a deleted folder is no longer a default
    assert ws.latest("model", ("ddpm",))["path"] == "runs/ddpm-1"
    assert (tmp_path / ws.new_output("model", "ddpm")) == tmp_path / "runs" / "ddpm-2"
    ws.record("model", tmp_path / "runs" / "ddpm-1", type="ddpm", figures={"loss": 0.1})  # same path: replaced
    assert [e["path"] for e in ws.entries()].count("runs/ddpm-1") == 1


def test_concurrent_writers_lose_nothing(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_record_many, args=(str(tmp_path), tag, 15)) for tag in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    entries = Workspace(tmp_path).entries()
    assert len(entries) == 30
    assert json.loads((tmp_path / INDEX).read_text())["version"] == 1
    assert not list(tmp_path.glob(f".{INDEX}.*.tmp"))


def test_corrupt_index_is_a_one_line_error(tmp_path):
    (tmp_path / INDEX).write_text('{"entries": [')  # what a non-atomic writer would leave
    with pytest.raises(DefectgenError, match=INDEX):
        Workspace(tmp_path).entries()


def test_config_file_and_env(tmp_path, monkeypatch):
    monkeypatch.delenv("DEFECTGEN_CONFIG", raising=False)
    assert load_config(tmp_path) == {}
    (tmp_path / "defectgen.yaml").write_text("train-ddpm:\n  preset: tiny\n  batch-size: 2\n")
    assert load_config(tmp_path) == {"train-ddpm": {"preset": "tiny", "batch_size": 2}}
    other = tmp_path / "other.yaml"
    other.write_text("synthesize: {steps: 3}\n")
    monkeypatch.setenv("DEFECTGEN_CONFIG", str(other))
    assert load_config(tmp_path) == {"synthesize": {"steps": 3}}
    monkeypatch.setenv("DEFECTGEN_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(DefectgenError, match="missing.yaml"):
        load_config(tmp_path)


def test_synthesize_defaults_take_the_latest_fitting_model_and_its_normals(tmp_path):
    from defectgen.workspace import output_folder, synthesize_defaults

    ws = Workspace(tmp_path)
    with pytest.raises(DefectgenError, match="no `model` given"):
        synthesize_defaults(ws, None, None)
    for name, type_ in (("ddpm-1", "ddpm"), ("ldm-1", "ldm")):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "defectgen.json").write_text(json.dumps({"data": {"normals": "data/good"}}))
        ws.record("model", tmp_path / "runs" / name, type=type_)
    model, normals, notes = synthesize_defaults(ws, None, None, prompt="copper scratches")
    assert model == str(tmp_path / "runs" / "ldm-1") and str(normals) == "data/good"
    assert notes[0] == "using model runs/ldm-1 (most recent text-guided model in the workspace)"
    assert notes[1].startswith("using normals data/good")
    model, normals, notes = synthesize_defaults(ws, None, tmp_path / "given")
    assert model.endswith("ddpm-1") and normals == tmp_path / "given" and len(notes) == 1
    assert output_folder(ws, "mine", "set", "ddpm") == (Path("mine"), [])
    with pytest.raises(DefectgenError, match="`resume` needs `out_dir`"):
        output_folder(ws, None, "set", "ddpm", resume=True)
    out, notes = output_folder(ws, None, "set", "ddpm")
    assert out.name == "ddpm-1" and out.parent.name == "synth" and "no `out_dir` given" in notes[0]


def test_validate_defaults_follow_the_latest_set(tmp_path):
    from defectgen.workspace import validate_defaults

    ws = Workspace(tmp_path)
    for sub in ("mv/train/good", "mv/test", "mv/ground_truth", "synth/ddpm-1"):
        (tmp_path / sub).mkdir(parents=True)
    with pytest.raises(DefectgenError, match="no `train` given"):
        validate_defaults(ws, "exdd", None, None, None, None)
    ws.record("set", tmp_path / "synth" / "ddpm-1", type="ddpm", inputs={"normals": str(tmp_path / "mv/train/good")})
    synthetic, train, test, out, notes = validate_defaults(ws, "exdd", None, None, None, None)
    assert synthetic == [tmp_path / "synth" / "ddpm-1"] and train == tmp_path / "mv" / "train" / "good"
    assert test.resolve() == (tmp_path / "mv").resolve() and out.parts[-2:] == ("reports", "exdd-1")
    assert [n.split(" (")[0] for n in notes] == ["using synthetic set synth/ddpm-1", "using normals mv/train/good",
                                                 f"using test set {test / 'test'}", f"using output folder {out}"]
    synthetic, train, test, _, notes = validate_defaults(ws, "seg", ["none"], "none", tmp_path / "t", "r")
    assert (synthetic, train, test, notes) == (None, None, tmp_path / "t", [])
    with pytest.raises(DefectgenError, match="`train` none needs `test`"):
        validate_defaults(ws, "seg", None, "none", None, None)
