"""`validate` end to end on a tiny MVTec-like test set and a tiny synthetic COCO set built in tmp_path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from defectgen.errors import DefectgenError
from defectgen.evaluate import ValidationConfig, run_validation
from defectgen.io.coco import CocoBuilder
from tests.conftest import write_png

S = 32


def _normal(rng):
    return np.clip(rng.normal(110, 12, (S, S)), 0, 255).astype(np.uint8)


def _spot(rng, img):
    m = np.zeros((S, S), np.uint8)
    y, x = rng.integers(2, S - 10, 2)
    img = img.copy()
    img[y:y + 8, x:x + 8] = 250
    m[y:y + 8, x:x + 8] = 255
    return img, m


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("val")
    rng = np.random.default_rng(0)
    mv = root / "mv"
    train = [_normal(rng) for _ in range(10)]
    for i, img in enumerate(train):
        write_png(mv / "train" / "good" / f"{i:03d}.png", img)
    for i in range(3):
        write_png(mv / "test" / "good" / f"{i:03d}.png", _normal(rng))
        img, m = _spot(rng, _normal(rng))
        write_png(mv / "test" / "spot" / f"{i:03d}.png", img)
        write_png(mv / "ground_truth" / "spot" / f"{i:03d}_mask.png", m)
    syn = root / "syn"
    coco = CocoBuilder()
    for i in range(4):
        img, m = _spot(rng, train[i])
        write_png(syn / "images" / f"{i:06d}.png", img)
        write_png(syn / "masks" / f"{i:06d}.png", m)
        coco.add_mask(coco.add_image(f"images/{i:06d}.png", S, S, source=str(mv / "train" / "good" / f"{i:03d}.png")),
                      m > 0, "spot")
    coco.save(syn / "annotations.json")
    return root


@pytest.mark.parametrize("detector", ["exdd", "ast"])
def test_validate_writes_report_with_every_baseline(data, tmp_path, detector):
    out = tmp_path / "report"
    res = run_validation(ValidationConfig(
        detector, data / "mv", data / "mv", out, synthetic=data / "syn", baselines=["none", "draem"], resolution=S,
        steps=4, batch_size=4, coreset_ratio=0.5, n_overlays=3, progress=False, save_models=True))
    assert list(res["runs"]) == ["synthetic", "none", "draem"]
    saved = json.loads((out / "report.json").read_text())
    assert saved["runs"].keys() == res["runs"].keys()
    for run in saved["runs"].values():
        m = run["metrics"]
        for key in ("image_auroc", "pixel_auroc", "aupro", "pixel_ap"):
            assert 0 <= m[key] <= 1
        assert set(run["per_class"]) == {"spot"}
    assert saved["test"] == {"images": 6, "normal": 3, "defect": 3, "classes": {"good": 3, "spot": 3}}
    assert saved["hardware"]["torch"] and saved["wall_time_s"] > 0
    assert saved["runs"]["draem"]["synthetic_images"] == 4  # the same count as the synthetic set
    if detector == "ast":
        assert saved["synthetic_clean_sources"]["declared"] == 4  # annotations.json names each source normal
    md = (out / "report.md").read_text()
    assert all(f"| {name} |" in md for name in ("synthetic", "none", "draem"))
    assert (out / "roc.png").stat().st_size > 1000
    assert len(list((out / "overlays").glob("*.png"))) == 3
    assert len(list(out.glob(f"{detector}_*.safetensors"))) == 3


def test_baselines_only_and_cli(data, tmp_path):
    from typer.testing import CliRunner

    from defectgen.cli import app

    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["validate", "--detector", "exdd", "--train", str(data / "mv" / "train" / "good"),
                                      "--test", str(data / "mv"), "--out", str(out), "--baselines", "none",
                                      "--resolution", "32", "--coreset-ratio", "0.5", "--overlays", "0"])
    assert result.exit_code == 0, result.output
    assert "none" in result.output
    assert list(json.loads((out / "report.json").read_text())["runs"]) == ["none"]


def _one_line_error(excinfo, folder) -> None:
    text = str(excinfo.value)
    assert "\n" not in text and str(folder) in text


def test_test_set_without_masks_fails(data, tmp_path):
    bad = tmp_path / "nomask"
    for sub in ("train/good", "test/good", "test/spot"):
        for f in sorted((data / "mv" / sub).glob("*.png")):
            write_png(bad / sub / f.name, np.zeros((S, S), np.uint8) + 100)
    (bad / "ground_truth").mkdir()
    with pytest.raises(DefectgenError, match="has no mask") as e:
        run_validation(ValidationConfig(
            "exdd", data / "mv", bad, tmp_path / "o", baselines=["none"], resolution=S, progress=False))
    _one_line_error(e, bad)
    assert not (tmp_path / "o").exists()  # nothing written before the inputs are checked


def test_no_normals_fails(data, tmp_path):
    only_defects = tmp_path / "defects"
    for f in sorted((data / "mv" / "test" / "spot").glob("*.png")):
        write_png(only_defects / "spot" / f.name, np.zeros((S, S), np.uint8))
        write_png(only_defects / "spot" / f"{f.stem}_mask.png", np.full((S, S), 255, np.uint8))
    with pytest.raises(DefectgenError, match="no normal images") as e:
        run_validation(ValidationConfig(
            "ast", only_defects, data / "mv", tmp_path / "o", baselines=["none"], resolution=S, progress=False))
    _one_line_error(e, only_defects)


def test_synthetic_without_masks_fails(data, tmp_path):
    plain = tmp_path / "plain"
    for f in sorted((data / "syn" / "images").glob("*.png")):
        write_png(plain / f.name, np.zeros((S, S), np.uint8))
    with pytest.raises(DefectgenError, match="no defect masks") as e:
        run_validation(ValidationConfig(
            "exdd", data / "mv", data / "mv", tmp_path / "o", synthetic=plain, resolution=S, progress=False))
    _one_line_error(e, plain)


def test_unknown_choices_fail(data, tmp_path):
    with pytest.raises(DefectgenError, match="unknown detector"):
        run_validation(ValidationConfig("yolo", data / "mv", data / "mv", tmp_path / "o"))
    with pytest.raises(DefectgenError, match="unknown baseline"):
        run_validation(ValidationConfig("exdd", data / "mv", data / "mv", tmp_path / "o", baselines=["cutpaste"]))


def test_redirected_validate_prints_progress_and_the_whole_jobs_estimate(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DEFECTGEN_PROGRESS_SECONDS", "0")  # stderr is not a terminal here: plain lines
    run_validation(ValidationConfig(
        "ast", data / "mv", data / "mv", tmp_path / "ast", synthetic=data / "syn", baselines=["none"], resolution=S,
        steps=6, batch_size=4, n_overlays=0, progress=True))
    err = capsys.readouterr().err
    lines = err.splitlines()
    whole = [line for line in lines if line.startswith("validate: ")]
    assert len(whole) == 1 and whole[0].startswith("validate: 2 runs (synthetic, none) of 6 steps each"), err
    assert "run 1 of 2 (synthetic)" in whole[0]
    assert any(line.startswith("run 2 of 2 (none): 6 steps take about") for line in lines), err
    for run in ("synthetic", "none"):
        assert any(line.startswith(f"[{run}] ast") and "6/6" in line for line in lines), err
        assert any(line.startswith(f"[{run}] ast: scoring") and "6/6" in line for line in lines), err

    run_validation(ValidationConfig(
        "exdd", data / "mv", data / "mv", tmp_path / "exdd", synthetic=data / "syn", baselines=["none"], resolution=S,
        coreset_ratio=0.5, n_overlays=0, progress=True))
    lines = capsys.readouterr().err.splitlines()
    for step in ("normal features", "coreset", "scoring"):
        assert any(line.startswith(f"[none] exdd: {step}") for line in lines), lines
    assert any(line.startswith("run 2 of 2 (none): about") for line in lines), lines
