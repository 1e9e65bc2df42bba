"""Diffusion features: a DDPM run folder as the detectors' backbone (`--backbone runs/ddpm`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from defectgen.detect.backbone import load_backbone
from defectgen.detect.diffusion_features import DiffusionBackbone
from defectgen.detect.exdd import ExDD
from defectgen.diffusion.ddpm import build_model, save_model
from defectgen.diffusion.train_ddpm import train_ddpm
from defectgen.diffusion.training import TrainConfig
from defectgen.errors import DefectgenError
from defectgen.evaluate import ValidationConfig, run_validation
from defectgen.metrics import evaluate
from tests.conftest import texture, write_png


@pytest.fixture
def ddpm_run(tmp_path):
    """An untrained tiny DDPM run folder (decoder levels: 64 ch at stride 4, 64 at 2, 32 at 1)."""
    torch.manual_seed(0)
    return save_model(build_model("ddpm", 32, 1, "tiny"), tmp_path / "ddpm")


def test_shapes_at_the_requested_strides(ddpm_run):
    bb = load_backbone(str(ddpm_run))
    assert isinstance(bb, DiffusionBackbone) and bb.in_channels == 1 and not bb.training
    x = torch.rand(2, 3, 32, 64)  # non-square, RGB into a gray model
    maps = bb(x, (1, 2, 4, 8, 16))
    assert [tuple(m.shape) for m in maps] == [(2, 32, 32, 64), (2, 64, 16, 32), (2, 64, 8, 16), (2, 64, 4, 8),
                                              (2, 64, 2, 4)]
    # a side that is not a multiple of the UNet's 4 is padded, and the maps cropped back to cover the image
    assert [tuple(m.shape[-2:]) for m in bb(torch.rand(1, 1, 30, 50), (4, 8))] == [(8, 13), (4, 7)]
    assert bb.channels((8, 16)) == [64, 64]


def test_projection_compresses_and_is_recorded(ddpm_run):
    bb = load_backbone(str(ddpm_run), feature_dim=8)
    normals = np.stack([texture(np.random.default_rng(i)) for i in range(4)])[..., None]
    bb.fit_projection(normals)
    assert [tuple(m.shape) for m in bb(torch.rand(1, 1, 32, 64), (8, 16))] == [(1, 8, 4, 8), (1, 8, 2, 4)]
    c = bb.compression((8, 16))
    assert (c["channels_raw"], c["channels"]) == (128, 16)
    assert (c["bytes_per_patch_raw"], c["bytes_per_patch"]) == (512, 64)


def test_features_are_deterministic_and_per_image(ddpm_run):
    bb = load_backbone(str(ddpm_run), feature_timesteps=(50, 200))
    x = torch.rand(3, 1, 32, 32)
    first = bb(x, (4, 8))
    again = bb(x, (4, 8))
    alone = bb(x[1:2], (4, 8))  # the same image alone: the noise does not depend on the batch
    for a, b, c in zip(first, again, alone, strict=True):
        assert torch.equal(a, b)
        assert torch.allclose(a[1:2], c, atol=1e-5)
    one = load_backbone(str(ddpm_run), feature_timesteps=(50,))(x, (4,))[0]
    assert not torch.allclose(one, first[0])  # the second timestep is averaged in


def test_not_a_ddpm_run_is_one_line_naming_the_folder(tmp_path, ddpm_run):
    ldm = tmp_path / "ldm"
    ldm.mkdir()
    (ldm / "defectgen.json").write_text(json.dumps({"kind": "ldm", "resolution": 64, "channels": 3}))
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "defectgen.json").write_text(json.dumps({"kind": "ddpm", "resolution": 32, "channels": 1}))
    for folder, words in ((ldm, "not a DDPM run"), (empty, "not a backbone"), (broken, "cannot load")):
        with pytest.raises(DefectgenError, match=words) as e:
            load_backbone(str(folder))
        assert str(folder) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DefectgenError, match=r"`feature_timesteps` must lie in \[0, 1000\)"):
        load_backbone(str(ddpm_run), feature_timesteps=(1000,))
    with pytest.raises(DefectgenError, match="only to a DDPM run folder"):
        load_backbone("tiny", feature_timesteps=(100,))


def test_exdd_with_ddpm_features_writes_the_report(ddpm_run, mvtec_dir, tmp_path):
    out = tmp_path / "report"
    res = run_validation(ValidationConfig(
        "exdd", mvtec_dir, mvtec_dir, out, synthetic=None, baselines=["none"], backbone=str(ddpm_run), resolution=32,
        coreset_ratio=0.5, n_overlays=1, progress=False, feature_timesteps=[100, 200], feature_dim=16,
        save_models=True))
    saved = json.loads((out / "report.json").read_text())
    cfg = saved["config"]
    assert (cfg["backbone"], cfg["backbone_pretrained"]) == (str(ddpm_run), True)
    assert (cfg["feature_timesteps"], cfg["feature_dim"]) == ([100, 200], 16)
    c = saved["runs"]["none"]["compression"]
    assert (c["channels_raw"], c["channels"], c["bytes_per_patch"]) == (128, 32, 128)
    assert 0 <= res["runs"]["none"]["metrics"]["pixel_auroc"] <= 1
    # the saved banks carry the PCA: reloaded by name, they score as before
    det = ExDD.load(out / "exdd_none.safetensors")
    assert det.backbone.timesteps == (100, 200) and det.negative.shape[1] == 32


@pytest.mark.parametrize("detector", ["ast", "seg"])
def test_trained_detectors_take_ddpm_features(ddpm_run, mvtec_dir, tmp_path, detector):
    # a gray DDPM teacher: AST's student reads the 1-channel image as the teacher does
    res = run_validation(ValidationConfig(
        detector, mvtec_dir, mvtec_dir, tmp_path / "r", baselines=["draem"], backbone=str(ddpm_run), resolution=32,
        steps=2, batch_size=2, n_overlays=0, progress=False))
    assert res["config"]["backbone"] == str(ddpm_run) and res["config"]["feature_timesteps"] == [100]
    assert 0 <= res["runs"]["draem"]["metrics"]["pixel_auroc"] <= 1


def test_trained_ddpm_features_find_a_pasted_square(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(8):
        write_png(tmp_path / "good" / f"{i}.png", texture(rng))
    cfg = TrainConfig(steps=30, batch_size=4, lr=2e-3, warmup_steps=0, lr_schedule="constant", ema=False,
                      checkpoint_every=0, progress=False, seed=0)
    train_ddpm(tmp_path / "run", tmp_path / "good", preset="tiny", resolution=16, config=cfg, log=lambda m: None)
    normals = np.stack([texture(rng) for _ in range(8)])[..., None]
    images, masks = [], []
    for i in range(8):
        image, mask = texture(rng), np.zeros((32, 32), bool)
        if i % 2:
            y, x = rng.integers(4, 20, 2)
            image[y:y + 8, x:x + 8], mask[y:y + 8, x:x + 8] = 255, True
        images.append(image)
        masks.append(mask)
    det = ExDD(load_backbone(str(tmp_path / "run"), feature_timesteps=(300,)), coreset_ratio=1.0, sigma=1.0)
    maps, scores = det.fit(normals).predict(np.stack(images)[..., None])
    m = evaluate(np.arange(8) % 2 == 1, scores, np.stack(masks), maps)
    assert m["image_auroc"] >= 0.9 and m["pixel_auroc"] > 0.85  # 1.0 and 0.94 when written


def test_fused_backbone_puts_both_side_by_side_and_round_trips(ddpm_run, mvtec_dir, tmp_path):
    from defectgen.detect.fusion import FusedBackbone

    spec = f"tiny+{ddpm_run}"
    bb = load_backbone(spec, feature_dim=8)
    tiny, ddpm = load_backbone("tiny"), load_backbone(str(ddpm_run), feature_dim=8)
    assert isinstance(bb, FusedBackbone) and bb.name == spec
    x = torch.rand(2, 3, 32, 64)
    fused, alone = bb(x, (8, 16)), tiny(x, (8, 16))
    assert [tuple(m.shape) for m in fused] == [(2, a.shape[1] + 64, *a.shape[-2:]) for a in alone]
    assert torch.equal(fused[0][:, : alone[0].shape[1]], alone[0])  # the first part's maps, unchanged
    assert bb.channels((8, 16)) == [a + b for a, b in zip(tiny.channels((8, 16)), ddpm.channels((8, 16)),
                                                           strict=True)]
    out = tmp_path / "report"
    run_validation(ValidationConfig(
        "exdd", mvtec_dir, mvtec_dir, out, baselines=["none"], backbone=spec, resolution=32, coreset_ratio=0.5,
        n_overlays=0, progress=False, feature_dim=8, save_models=True))
    saved = json.loads((out / "report.json").read_text())
    c = saved["runs"]["none"]["compression"]
    tiny_ch = sum(tiny.channels((8, 16)))
    assert (c["channels_raw"], c["channels"]) == (tiny_ch + 128, tiny_ch + 16)
    assert saved["config"]["backbone_pretrained"] is False  # a random part makes the whole untrustworthy
    det = ExDD.load(out / "exdd_none.safetensors")  # the fusion and its PCA come back by name
    assert isinstance(det.backbone, FusedBackbone) and det.negative.shape[1] == tiny_ch + 16
    images = np.stack([texture(np.random.default_rng(i)) for i in range(2)])[..., None]
    assert det.predict(images)[0].shape == (2, 32, 32)
    with pytest.raises(DefectgenError, match="names each part"):
        load_backbone("tiny+")


def test_trained_detectors_save_the_diffusion_backbone_options(ddpm_run, tmp_path):
    from defectgen.detect.base import DetectorOptions, get_detector, load_detector

    rng = np.random.default_rng(0)
    normals = np.stack([texture(rng) for _ in range(4)])[..., None]
    defects = normals.copy()
    defects[:, 8:16, 8:16] = 250
    masks = np.zeros((4, 32, 32), bool)
    masks[:, 8:16, 8:16] = True
    bb = load_backbone(str(ddpm_run), feature_timesteps=(50, 300))
    for name in ("seg", "ast"):
        det = get_detector(name).from_options(bb, DetectorOptions(steps=2, batch_size=2))
        det.fit(normals, defects, masks, cleans=normals)
        det.save(tmp_path / f"{name}.safetensors")
        again = load_detector(tmp_path / f"{name}.safetensors")
        backbone = again.backbone if name == "seg" else again.teacher
        assert backbone.timesteps == (50, 300)
        assert np.allclose(again.predict(defects)[0], det.predict(defects)[0], atol=1e-5)
