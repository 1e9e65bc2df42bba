"""Images at their own aspect (issue 14): the resolution spec, detectors on H != W inputs, maps and metrics at
each test image's own size, tiles at native scale, masks that keep their native size, and the CLI's errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from defectgen.errors import DefectgenError
from defectgen.evaluate import ValidationConfig, run_validation
from defectgen.io.coco import CocoBuilder
from defectgen.io.images import read_image
from defectgen.io.resolution import parse_resolution
from tests.conftest import write_png

H, W = 64, 192  # a long, narrow part (3:1)


def _normal(rng, h=H, w=W):
    return np.clip(rng.normal(110, 2, (h, w)), 0, 255).astype(np.uint8)


def _spot(rng, img):
    """A thin bright defect (6 x 2 px): squashed 3:1 it is a third of a pixel wide."""
    h, w = img.shape
    m = np.zeros((h, w), np.uint8)
    y, x = rng.integers(8, h - 14), rng.integers(8, w - 10)
    img = img.copy()
    img[y:y + 6, x:x + 2] = 250
    m[y:y + 6, x:x + 2] = 255
    return img, m


def _mvtec(root, rng, h=H, w=W, n_train=10, n_test=6):
    train = [_normal(rng, h, w) for _ in range(n_train)]
    for i, img in enumerate(train):
        write_png(root / "train" / "good" / f"{i}.png", img)
    for i in range(n_test):
        write_png(root / "test" / "good" / f"{i}.png", _normal(rng, h, w))
        img, m = _spot(rng, _normal(rng, h, w))
        write_png(root / "test" / "spot" / f"{i}.png", img)
        write_png(root / "ground_truth" / "spot" / f"{i}_mask.png", m)
    return train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("aspect")
    rng = np.random.default_rng(0)
    train = _mvtec(root / "mv", rng)
    coco = CocoBuilder()
    for i in range(6):  # synthetic spots painted on the normals: what seg learns from
        img, m = _spot(rng, train[i])
        write_png(root / "syn" / "images" / f"{i:06d}.png", img)
        coco.add_mask(coco.add_image(f"images/{i:06d}.png", H, W), m > 0, "spot")
    coco.save(root / "syn" / "annotations.json")
    _mvtec(root / "odd", np.random.default_rng(1), 70, 200, n_train=4, n_test=2)  # not multiples of 32
    return root


def test_resolution_spec_reads_hxw_or_the_short_side():
    assert parse_resolution("64x192").for_image(70, 200) == (64, 192)
    assert parse_resolution("64").for_image(70, 200) == (64, 192)  # 182.9 -> the nearest multiple of 32
    assert parse_resolution(256).for_image(1600, 256) == (1600, 256)
    assert parse_resolution(256).for_image(300, 300) == (256, 256)  # a square stays as before
    assert parse_resolution([64, 192]).for_image(1, 1) == (64, 192)  # as report.json records it
    assert parse_resolution("32").for_sizes([(40, 80), (50, 50), (40, 80)]) == (32, 64)  # the most common size
    assert parse_resolution("48", multiple=16).for_image(48, 100) == (48, 96)
    for bad in ("100x33", "0", "-5", "abc", "64x", 0):
        with pytest.raises(DefectgenError, match="`resolution`") as e:
            parse_resolution(bad)
        assert "\n" not in str(e.value)


def _pixel_auroc(data, tmp_path, detector, resolution, **kw):
    res = run_validation(ValidationConfig(
        detector, data / "mv", data / "mv", tmp_path / f"{detector}-{resolution}", resolution=resolution, steps=60,
        batch_size=4, coreset_ratio=0.5, n_overlays=1, progress=False, **kw))
    run = res["runs"]["none" if "none" in res["runs"] else "synthetic"]
    return run["metrics"]["pixel_auroc"], res


@pytest.mark.parametrize("detector", ["exdd", "seg"])
def test_detectors_find_a_thin_defect_at_the_images_own_aspect(data, tmp_path, detector):
    kw = {"synthetic": None, "baselines": ["none"]} if detector == "exdd" else \
        {"synthetic": data / "syn", "baselines": []}
    own, res = _pixel_auroc(data, tmp_path, detector, "64x192", **kw)
    squashed, _ = _pixel_auroc(data, tmp_path, detector, "64x64", **kw)
    assert own > 0.9 and own > squashed, (own, squashed)
    saved = json.loads((tmp_path / f"{detector}-64x192" / "report.json").read_text())
    assert saved["config"]["resolution"] == [64, 192] and saved["config"]["tile"] is None
    overlay = read_image(next((tmp_path / f"{detector}-64x192" / "overlays").glob("*.png")))
    assert overlay.shape[0] == H  # drawn at the image's own size


def test_images_whose_size_is_no_multiple_of_32(data, tmp_path):
    """70 x 200 images: the model sees 64 x 192 (short side 64, aspect kept), maps come back at 70 x 200."""
    res = run_validation(ValidationConfig(
        "exdd", data / "odd", data / "odd", tmp_path / "odd", baselines=["none"], resolution="64", coreset_ratio=0.5,
        n_overlays=1, progress=False))
    assert res["config"]["resolution"] == [64, 192]
    assert 0 <= res["runs"]["none"]["metrics"]["pixel_auroc"] <= 1
    overlay = read_image(next((tmp_path / "odd" / "overlays").glob("*.png")))
    assert overlay.shape[0] == 70 and overlay.shape[1] >= 2 * 200


def test_tiles_give_maps_at_the_images_own_size(data, tmp_path):
    from defectgen.detect.backbone import load_backbone
    from defectgen.detect.exdd import ExDD
    from defectgen.detect.tiling import Tiled

    rng = np.random.default_rng(2)
    normals = [_normal(rng, 100, 300)[:, :, None] for _ in range(3)] + [_normal(rng, 40, 50)[:, :, None]]
    det = Tiled(ExDD(load_backbone("tiny"), coreset_ratio=0.5, sigma=1.0), tile=64).fit(normals)
    img, m = _spot(rng, _normal(rng, 100, 300))
    maps, scores = det.predict([img[:, :, None], _normal(rng, 40, 50)[:, :, None]])
    assert maps[0].shape == (100, 300) and maps[1].shape == (40, 50) and scores.shape == (2,)
    assert maps[0][m > 0].mean() > np.percentile(maps[0], 99)  # the defect stands out after stitching
    res = run_validation(ValidationConfig(
        "exdd", data / "odd", data / "odd", tmp_path / "tiled", baselines=["none"], tile=64, coreset_ratio=0.5,
        n_overlays=0, progress=False))
    assert res["config"]["tile"] == 64 and res["config"]["resolution"] == [64, 64]


@pytest.mark.parametrize("name", ["ast", "seg", "exdd"])
def test_every_detector_takes_wide_inputs_and_tiles(name):
    """H != W feature maps (AST's student and head, seg's decoder, ExDD's banks), and tiles with defects."""
    from defectgen.detect.backbone import load_backbone
    from defectgen.detect.base import DetectorOptions, get_detector
    from defectgen.detect.tiling import Tiled

    rng = np.random.default_rng(3)
    normals = rng.integers(90, 130, (4, 64, 192, 1), dtype=np.uint8)
    masks = np.zeros((4, 64, 192), bool)
    masks[:, 10:16, 30:34] = True
    defects = np.where(masks[..., None], np.uint8(250), normals)
    options = DetectorOptions(steps=2, batch_size=4, coreset_ratio=0.5)
    det = get_detector(name).from_options(load_backbone("tiny"), options)
    maps, scores = det.fit(normals, defects, masks, cleans=normals).predict(defects)
    assert maps.shape == (4, 64, 192) and scores.shape == (4,)
    big = [rng.integers(90, 130, (100, 250, 1), dtype=np.uint8) for _ in range(2)]
    tiled = Tiled(get_detector(name).from_options(load_backbone("tiny"), options), tile=64)
    tiled.fit(big, big, [np.pad(m, ((0, 36), (0, 58))) for m in masks[:2]],
              cleans=big, labels=[np.pad(m, ((0, 36), (0, 58))).astype(np.uint8) for m in masks[:2]],
              class_names=["spot"])
    maps, scores = tiled.predict([*big, normals[0]])
    assert [m.shape for m in maps] == [(100, 250), (100, 250), (64, 192)] and scores.shape == (3,)


def test_bad_resolution_and_tile_give_one_line_and_exit_2(data, tmp_path, run_cli):
    base = ["validate", "--detector", "exdd", "--train", data / "mv", "--test", data / "mv", "--synthetic", "none",
            "--baselines", "none", "--out", tmp_path / "o"]
    cases = [(["--resolution", "100x33"], "--resolution"), (["--resolution", "0"], "--resolution"),
             (["--tile", "0"], "--tile"), (["--tile", "-64"], "--tile")]
    cases = [(base + extra, flag) for extra, flag in cases]
    cases += [(["inspect", data / "syn", "--against", data / "mv", "--resolution", "abc"], "--resolution"),
              (["train-ddpm", "--normals", data / "mv", "--preset", "tiny", "--resolution", "32x64", "--out",
                tmp_path / "r"], "square")]
    for args, word in cases:
        code, out, err = run_cli(*args)
        lines = [line for line in err.strip().splitlines() if line]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and word in lines[0], (args, err)
    assert not (tmp_path / "o").exists() and not (tmp_path / "r").exists()


def test_masks_from_another_image_size_keep_their_pixels(data, mvtec_dir, tmp_path, run_cli):
    """--masks-from: 4 x 4 masks labeled on 32 x 32 images stay 4 x 4 on 64 x 192 normals (not stretched 2 x 6)."""
    code, _, err = run_cli("synthesize", "--model", "draem", "--normals", data / "mv" / "train" / "good", "--n", "3",
                           "--masks-from", mvtec_dir / "labeled", "--out", tmp_path / "real")
    assert code == 0, err
    for path in sorted((tmp_path / "real" / "masks").glob("*.png")):
        m = read_image(path)[:, :, 0] > 0
        ys, xs = np.nonzero(m)
        assert m.shape == (H, W) and m.sum() == 16 and np.ptp(ys) == 3 and np.ptp(xs) == 3
