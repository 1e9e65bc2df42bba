"""Generation-quality metrics: KID, diversity, realism, and `inspect --against`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from defectgen.evaluate.quality import class_fidelity, defect_crop, diversity, kid, per_class_kid
from tests.conftest import square_mask, write_png


def test_kid_is_near_zero_for_one_distribution_and_large_for_another():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, (80, 16)), rng.normal(0, 1, (80, 16))
    far = rng.normal(2, 1, (80, 16))
    same, _ = kid(a, b)
    other, _ = kid(a, far)
    assert abs(same) < 0.05 and other > 10 * max(abs(same), 1e-3)


def test_diversity_zero_for_copies_and_positive_for_variety():
    rng = np.random.default_rng(1)
    one = rng.normal(size=(1, 8))
    assert diversity(np.repeat(one, 5, axis=0)) == pytest.approx(0, abs=1e-6)
    assert diversity(rng.normal(size=(5, 8))) > 0.5


def test_per_class_kid_compares_each_class_with_its_own():
    rng = np.random.default_rng(2)
    real = np.concatenate([rng.normal(0, 1, (40, 16)), rng.normal(3, 1, (40, 16))])
    real_cls = ["a"] * 40 + ["b"] * 40
    right = np.concatenate([rng.normal(0, 1, (30, 16)), rng.normal(3, 1, (30, 16))])
    swapped = ["b"] * 30 + ["a"] * 30  # the same features under the wrong labels
    good = per_class_kid(right, ["a"] * 30 + ["b"] * 30 + [], real, real_cls)
    bad = per_class_kid(right, swapped, real, real_cls)
    assert set(good) == {"a", "b"} and good["a"]["generated"] == 30 and good["b"]["real"] == 40
    assert all(bad[c]["kid"] > 10 * max(abs(good[c]["kid"]), 1e-3) for c in "ab")
    assert per_class_kid(right, [None] * 60, real, real_cls) == {}  # an unlabeled set has no per-class figure


def test_class_fidelity_names_the_class_a_real_classifier_sees():
    rng = np.random.default_rng(3)
    ref = np.concatenate([np.eye(8)[k] * 5 + rng.normal(0, 0.3, (20, 8)) for k in range(3)])  # three directions
    ref_cls = [c for c in "abc" for _ in range(20)]
    gen = ref[[0, 1, 2, 20, 21, 22]] + rng.normal(0, 0.05, (6, 8))  # three a-like, three b-like crops
    res = class_fidelity(ref, ref_cls, gen, ["a", "a", "a", "a", "b", "b"])  # one b-like crop asked to be an a
    assert res["recall"] == {"a": 0.75, "b": 1.0} and res["accuracy"] == pytest.approx(5 / 6)
    assert res["predicted"] == {"a": 3, "b": 3, "c": 0} and res["requested"] == {"a": 4, "b": 2}


def test_defect_crop_is_centred_on_the_mask():
    img = np.zeros((100, 100, 1), np.uint8)
    img[40:50, 60:70] = 255
    crop = defect_crop(img, img[:, :, 0] > 0, size=32, pad=0.5)
    assert crop.shape == (32, 32, 1) and crop[12:20, 12:20].mean() > 0.9 and crop[:4, :4].max() == 0


def _set(root, rng, n, bright):
    """Gray textures with a bright square inside each mask, or (bright=False) untouched texture there: the
    silent no-op inpaint, whose 'defects' look exactly like normal surface."""
    for i in range(n):
        img = rng.integers(90, 110, (48, 48), dtype=np.uint8)
        y, x = rng.integers(4, 30, 2)
        mask = square_mask(48, 48, y, x, 12)
        if bright:
            img[mask > 0] = 250
        write_png(root / "images" / f"{i}.png", img)
        write_png(root / "images" / f"{i}_mask.png", mask)
    return root


def test_realism_ranks_lookalike_defects_above_unlike_ones(tmp_path, run_cli):
    rng = np.random.default_rng(3)
    real = tmp_path / "real"
    for i in range(6):  # MVTec test split: normals and bright-square defects with masks
        write_png(real / "test" / "good" / f"{i}.png", rng.integers(90, 110, (48, 48), dtype=np.uint8))
        img = rng.integers(90, 110, (48, 48), dtype=np.uint8)
        mask = square_mask(48, 48, 10 + i, 12, 12)
        img[mask > 0] = 250
        write_png(real / "test" / "spot" / f"{i}.png", img)
        write_png(real / "ground_truth" / "spot" / f"{i}_mask.png", mask)
    write_png(real / "train" / "good" / "0.png", rng.integers(90, 110, (48, 48), dtype=np.uint8))
    figures = {}
    for name, bright in (("alike", True), ("unlike", False)):
        _set(tmp_path / name, rng, 6, bright)
        code, out, err = run_cli("inspect", tmp_path / name, "--against", real, "--json", "--resolution", "48",
                                 "--sheet-n", "0")
        assert code == 0, err
        figures[name] = json.loads(out)["quality"]
    assert figures["alike"]["realism"]["image_auroc"] > 0.8
    # no-op 'defects' look like surface: the filter keeps (almost) none of their patches, so they score 0.5 or less
    assert figures["unlike"]["realism"]["image_auroc"] <= 0.5
    assert figures["alike"]["kid"] < figures["unlike"]["kid"]


def _generated(rng, flags, size=96):
    """Gray textures with a 24 px square mask each; flag True paints the square bright (a defect), False leaves
    the surface untouched inside it (a no-op 'defect')."""
    images, masks = [], []
    for bright in flags:
        img = rng.integers(97, 103, (size, size, 3), dtype=np.uint8)
        y, x = rng.integers(4, size - 28, 2)
        mask = square_mask(size, size, y, x, 24) > 0
        if bright:
            img[mask] = 250
        images.append(img)
        masks.append(mask)
    return images, masks


def test_realism_filter_keeps_only_patches_unlike_the_surface():
    from defectgen.detect.backbone import load_backbone
    from defectgen.evaluate.quality import realism

    rng = np.random.default_rng(5)
    net = load_backbone("tiny")
    test, test_masks = _generated(rng, [True] * 6 + [False] * 6)
    labels = np.array([1] * 6 + [0] * 6)
    test_masks = [m if y else np.zeros_like(m) for m, y in zip(test_masks, labels, strict=True)]

    def score(flags, **kw):
        images, masks = _generated(np.random.default_rng(len(flags) + sum(flags)), flags)
        return realism(net, images, masks, test, labels, test_masks, resolution=96, **kw)

    real, noop, mixed = score([True] * 8), score([False] * 8), score([True, False] * 4)
    assert real["patches"]["kept"] >= 0.7 * real["patches"]["inside"]
    assert noop["patches"]["kept"] <= 0.1 * noop["patches"]["inside"] and noop["image_auroc"] <= 0.5
    # half no-op: about the bright half's patches survive ...
    assert 0.3 * mixed["patches"]["inside"] <= mixed["patches"]["kept"] <= 0.6 * mixed["patches"]["inside"]
    # ... and without the filter the no-op half's patches draw the real normals to the bank
    unfiltered = score([True, False] * 4, normal_quantile=None)
    assert unfiltered["patches"]["kept"] == unfiltered["patches"]["inside"]
    assert mixed["image_auroc"] > 0.6 and unfiltered["image_auroc"] < 0.2
    with pytest.raises(ValueError, match="normal_quantile"):
        score([True] * 2, normal_quantile=1.0)
