"""The compact copy of a dataset that travels to the GPU machine (benchmarks/gpu_check.py): the layout and names
stay, images shrink, masks stay binary, aligned with their images, and keep every defect."""

from __future__ import annotations

import json

import cv2
import numpy as np

from benchmarks.gpu_check import compact_dataset, scaled_size


def _fake_mvtec(root, rng):
    """One normal, one test defect with its ground truth and one labeled defect, 300 x 120 (H x W), plus a small
    normal that needs no shrinking and a file that is not an image."""
    h, w = 300, 120
    for name in ("train/good/n0.jpg", "test/crack/d0.jpg", "labeled/crack/l0.jpg"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(root / name), rng.integers(40, 220, (h, w), dtype=np.uint8))
    assert cv2.imwrite(str(root / "train/good/small.jpg"), rng.integers(40, 220, (50, 40), dtype=np.uint8))
    mask = np.zeros((h, w), np.uint8)
    mask[100:160, 30:70] = 255  # a block
    mask[200:290, 90] = 255  # a crack one pixel wide: nearest-neighbour shrinking would drop it
    for name in ("ground_truth/crack/d0_mask.png", "labeled/crack/l0_mask.png"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(root / name), mask)
    (root / "README.txt").write_text("source notes\n")
    return mask


def test_the_compact_copy_keeps_layout_binary_aligned_masks_and_every_defect(tmp_path):
    src, dst = tmp_path / "mt", tmp_path / "compact"
    mask = _fake_mvtec(src, np.random.default_rng(0))
    summary = compact_dataset(src, dst, max_side=64, quality=80)

    def files(root):
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    assert files(dst) == files(src)
    assert (dst / "README.txt").read_text() == "source notes\n"
    assert summary == json.loads((tmp_path / "compact.json").read_text())
    assert (summary["images"], summary["masks"], summary["other"], summary["resized"]) == (4, 2, 1, 5)

    small = scaled_size(300, 120, 64)
    assert small == (64, 26)
    for name in ("train/good/n0.jpg", "test/crack/d0.jpg", "labeled/crack/l0.jpg"):
        assert cv2.imread(str(dst / name), cv2.IMREAD_UNCHANGED).shape == small
    assert cv2.imread(str(dst / "train/good/small.jpg"), cv2.IMREAD_UNCHANGED).shape == (50, 40)  # small enough

    for name in ("ground_truth/crack/d0_mask.png", "labeled/crack/l0_mask.png"):
        out = cv2.imread(str(dst / name), cv2.IMREAD_UNCHANGED)
        assert out.shape == small and set(np.unique(out)) == {0, 255}
        sy, sx = small[0] / mask.shape[0], small[1] / mask.shape[1]
        block, crack = out[: int(180 * sy)], out[int(190 * sy):]
        # the block: about its area, in the same place
        ys, xs = np.nonzero(block)
        assert abs(len(ys) - 60 * 40 * sy * sx) <= 0.25 * 60 * 40 * sy * sx
        assert abs(ys.mean() - 129.5 * sy) < 1.5 and abs(xs.mean() - 49.5 * sx) < 1.5
        # the crack survives, where it was
        ys, xs = np.nonzero(crack)
        assert len(ys) and abs(xs.mean() - 90 * sx) <= 1


def test_a_small_image_keeps_its_size_and_a_large_one_its_aspect():
    assert scaled_size(200, 256, 256) == (200, 256)
    assert scaled_size(599, 244, 256) == (256, 104)
    assert scaled_size(1000, 10, 256) == (256, 3)
