"""Perlin, box and shape masks: bounds, determinism, presets."""

from __future__ import annotations

import numpy as np
import pytest

from defectgen.errors import DefectgenError
from defectgen.masks import BoxConfig, MaskGenerator, PerlinConfig, box_mask, load_preset, perlin_mask
from tests.conftest import square_mask, write_png


@pytest.mark.parametrize("shape", [(200, 200), (256, 512), (37, 91)])
def test_perlin_masks_non_empty_and_within_area_bounds(shape):
    cfg = PerlinConfig(min_area=0.01, max_area=0.2)
    for i in range(8):
        m = perlin_mask(*shape, np.random.default_rng(i), cfg)
        assert m.shape == shape and m.dtype == bool
        assert 0.01 <= m.mean() <= 0.2, (i, m.mean())


def test_perlin_fallback_hits_bounds_when_threshold_cannot():
    # threshold 0.99 almost never crosses: the quantile fallback must still land in the bounds.
    cfg = PerlinConfig(threshold=0.99, min_area=0.05, max_area=0.06, max_tries=2)
    m = perlin_mask(64, 80, np.random.default_rng(3), cfg)
    assert 0.05 <= m.mean() <= 0.06 + 1 / (64 * 80)


def test_perlin_respects_foreground():
    fg = np.zeros((100, 100), bool)
    fg[20:80, 30:70] = True
    m = perlin_mask(100, 100, np.random.default_rng(0), PerlinConfig(min_area=0.02, max_area=0.5), foreground=fg)
    assert m.any() and not (m & ~fg).any()


def test_same_seed_same_masks_other_seed_different():
    a, b, c = MaskGenerator("perlin", seed=5), MaskGenerator("perlin", seed=5), MaskGenerator("perlin", seed=6)
    for i in range(3):
        assert np.array_equal(a(i, 64, 48)[0], b(i, 64, 48)[0])
    assert not np.array_equal(a(0, 64, 48)[0], c(0, 64, 48)[0])
    assert not np.array_equal(a(0, 64, 48)[0], a(1, 64, 48)[0])  # and each index gets its own mask
    ba, bb = MaskGenerator("bbox", seed=1), MaskGenerator("bbox", seed=2)
    assert np.array_equal(ba(4, 50, 50)[0], MaskGenerator("bbox", seed=1)(4, 50, 50)[0])
    assert not np.array_equal(ba(4, 50, 50)[0], bb(4, 50, 50)[0])


def test_box_masks_sizes_follow_range_and_boxes_match_pixels():
    cfg = BoxConfig(shape="rect", count=(2, 3), width=(0.1, 0.2), height=(0.3, 0.4))
    for i in range(10):
        m, boxes = box_mask(100, 200, np.random.default_rng(i), cfg, label="dent")
        assert 2 <= len(boxes) <= 3 and m.any()
        for b in boxes:
            assert 20 <= b.width <= 40 and 30 <= b.height <= 40 and b.label == "dent"
            assert m[int(b.y0):int(b.y1), int(b.x0):int(b.x1)].all()


def test_ellipses_are_inside_their_boxes_and_not_rectangles():
    cfg = BoxConfig(shape="ellipse", width=(0.5, 0.5), height=(0.4, 0.4))
    m, (b,) = box_mask(80, 80, np.random.default_rng(0), cfg)
    assert (b.width, b.height) == (40, 32)
    assert not m[int(b.y0), int(b.x0)]  # the corner of the box is outside the ellipse
    assert 0.7 < m.sum() / (b.width * b.height) < 0.85  # pi/4 of the box, give or take pixels


def test_box_stats_drive_sizes():
    cfg = BoxConfig(stats=[(0.5, 0.1)])
    for i in range(5):
        _, (b,) = box_mask(100, 100, np.random.default_rng(i), cfg)
        assert 42 <= b.width <= 58 and 8 <= b.height <= 12


def test_shapes_from_folder(tmp_path):
    write_png(tmp_path / "shapes" / "a.png", square_mask(20, 20, 2, 2, 5))
    write_png(tmp_path / "shapes" / "empty.png", np.zeros((20, 20), np.uint8))
    gen = MaskGenerator("perlin", seed=0, shapes=tmp_path / "shapes")
    m, boxes = gen(0, 64, 64)
    assert m.any() and len(boxes) == 1
    assert m.sum() == boxes[0].width * boxes[0].height  # a square stays a filled square
    (tmp_path / "none").mkdir()
    with pytest.raises(DefectgenError, match="no non-empty masks"):
        MaskGenerator("perlin", shapes=tmp_path / "none")


def test_presets_load_and_bad_ones_fail(tmp_path):
    for name in ("perlin", "perlin-small", "perlin-large", "bbox", "scratches"):
        kind, values = load_preset(name)
        MaskGenerator(kind, preset=name)(0, 32, 32)
    with pytest.raises(DefectgenError, match="not found"):
        load_preset("no-such-preset")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: perlin\nwiggle: 3\n")
    with pytest.raises(DefectgenError, match="wiggle"):
        MaskGenerator("perlin", preset=str(bad))


def _labeled(root, masks: dict[str, list[np.ndarray]]):
    """A pairs-layout labeled set: root/<class>/<i>.png beside <i>_mask.png."""
    import cv2

    for cls, ms in masks.items():
        for i, m in enumerate(ms):
            (root / cls).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / cls / f"{i}.png"), np.full(m.shape, 128, np.uint8))
            cv2.imwrite(str(root / cls / f"{i}_mask.png"), m.astype(np.uint8) * 255)
    return root


def test_real_masks_follow_the_class_and_keep_their_native_size(tmp_path):
    """Issue 14: a mask keeps its pixel size on an image of another size or aspect (it used to be stretched to
    it), at its relative place: a band along the top edge stays along the top (or, flipped, the bottom) edge."""
    from defectgen.masks.real import RealMasks

    small, large = np.zeros((32, 32), bool), np.zeros((32, 32), bool)
    small[10:14, 10:14] = True
    large[0:16, :] = True
    gen = RealMasks(_labeled(tmp_path / "labeled", {"dot": [small], "band": [large]}), seed=1)
    assert gen.describe()["masks"] == {"band": 1, "dot": 1}
    for i in range(6):
        dot, boxes = gen(i, 64, 192, label="dot")
        assert dot.sum() == 16 and (boxes[0].width, boxes[0].height) == (4, 4) and boxes[0].label == "dot"
        band, _ = gen(i, 64, 96, label="band")
        assert band.sum() == 16 * 32 and band[:, 32:64].all(axis=1).sum() == 16  # 16 x 32, centred across
        assert band[:16, 32:64].all() or band[48:, 32:64].all()  # at the top or bottom edge
    drawn = {int(gen(i, 32, 32)[0].sum()) for i in range(20)}  # no class: any labeled mask
    assert drawn == {16, 512}
    assert all(np.array_equal(gen(i, 40, 40, label="dot")[0], gen(i, 40, 40, label="dot")[0]) for i in range(3))
    wide, _ = gen(0, 8, 64, label="band")  # larger than the image: shrunk to fit, aspect kept
    assert wide.shape == (8, 64) and wide.sum() == 8 * 16


def test_real_masks_go_on_the_parts_foreground(tmp_path):
    from defectgen.masks.real import RealMasks

    dot = np.zeros((32, 32), bool)
    dot[2:8, 2:8] = True  # top left on its own image
    gen = RealMasks(_labeled(tmp_path / "labeled", {"dot": [dot]}), flip=False)
    part = np.zeros((64, 192), bool)
    part[20:50, 120:180] = True  # the part sits right of centre on the new image
    mask, _ = gen(0, 64, 192, foreground=part)
    assert mask.sum() == 36 and (mask <= part).all()
    ys, xs = np.nonzero(mask)
    assert (ys.min(), xs.min()) == (20, 120)  # the place on the part nearest to its own (the top left)


def test_real_masks_keep_a_tiny_defect_when_shrinking(tmp_path):
    from defectgen.masks.real import RealMasks

    dot = np.zeros((300, 300), bool)
    dot[150, 150] = True
    mask, _ = RealMasks(_labeled(tmp_path / "labeled", {"pin": [dot]}))(0, 30, 30, label="pin")
    assert 1 <= mask.sum() <= 4 and abs(np.argwhere(mask).mean(0) - 15).max() <= 1.5


def test_real_masks_need_defects(tmp_path):
    from defectgen.errors import DefectgenError
    from defectgen.masks.real import RealMasks

    empty = np.zeros((16, 16), bool)
    with pytest.raises(DefectgenError, match="no defect masks"):
        RealMasks(_labeled(tmp_path / "labeled", {"none": [empty]}))
