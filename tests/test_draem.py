"""The DRAEM-style baseline generator: changes only the mask, per-seed determinism, gray and RGB, textures."""

from __future__ import annotations

import numpy as np
import pytest

from defectgen.errors import DefectgenError
from defectgen.masks import MaskGenerator
from defectgen.synth.base import DefectGenerator
from defectgen.synth.draem import DraemGenerator
from tests.conftest import write_png


def _inputs(channels: int, n: int = 3, h: int = 40, w: int = 56):
    rng = np.random.default_rng(channels)
    normals = [rng.uniform(0.3, 0.6, (h, w, channels)).astype(np.float32) for _ in range(n)]
    masks = [MaskGenerator("perlin", seed=1)(i, h, w)[0] for i in range(n)]
    return normals, masks


@pytest.mark.parametrize("channels", [1, 3])
def test_paints_inside_mask_only(channels):
    gen = DraemGenerator()
    assert isinstance(gen, DefectGenerator) and gen.name == "draem"
    normals, masks = _inputs(channels)
    out = gen.generate(normals, masks, [10, 11, 12], [None] * 3)
    for o, n, m in zip(out, normals, masks, strict=True):
        assert o.shape == n.shape and o.dtype == np.float32
        assert 0 <= o.min() and o.max() <= 1
        assert np.array_equal(o[~m], n[~m])
        assert np.abs(o[m] - n[m]).mean() > 0.01


def test_result_depends_only_on_its_seed():
    gen = DraemGenerator()
    normals, masks = _inputs(3)
    full = gen.generate(normals, masks, [5, 6, 7], [None] * 3)
    alone = gen.generate(normals[1:2], masks[1:2], [6], [None])
    assert np.array_equal(full[1], alone[0])
    other = gen.generate(normals[1:2], masks[1:2], [99], [None])
    assert not np.array_equal(other[0], alone[0])


def test_texture_folder_and_arrays(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        write_png(tmp_path / "tex" / f"{i}.png", rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    normals, masks = _inputs(1, n=2)
    out = DraemGenerator(tmp_path / "tex").generate(normals, masks, [1, 2], [None, None])
    assert out[0].shape == normals[0].shape
    arrays = DraemGenerator(textures=[np.full((8, 8, 1), 255, np.uint8)], opacity=(1.0, 1.0), n_augments=0)
    painted = arrays.generate(normals, masks, [3, 4], [None, None])
    assert np.allclose(painted[0][masks[0]], 1.0)  # full opacity, untouched white texture
    assert DraemGenerator(tmp_path / "tex").info()["textures"].endswith("tex")


def test_bad_texture_folder(tmp_path):
    with pytest.raises(DefectgenError, match="texture folder not found"):
        DraemGenerator(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DefectgenError, match="no images"):
        DraemGenerator(tmp_path / "empty")
