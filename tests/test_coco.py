"""COCO written through pycocotools reads back to exactly the masks that were written."""

from __future__ import annotations

import json

import numpy as np
from pycocotools.coco import COCO

from defectgen.io import read_mask
from defectgen.io.coco import CocoBuilder


def test_builder_round_trip(tmp_path):
    masks = []
    builder = CocoBuilder(["scratch"])
    for i in range(3):
        m = np.zeros((30, 40), bool)
        m[3 + i:9 + i, 5:20 - i] = True
        m[25, 35] = True  # a second, disjoint blob
        masks.append(m)
        builder.add_mask(builder.add_image(f"{i}.png", 30, 40), m, "scratch" if i else "pit")
    assert builder.add_mask(builder.add_image("empty.png", 30, 40), np.zeros((30, 40), bool), "pit") is None
    builder.save(tmp_path / "a.json", {"defectgen": {"seed": 1}})
    coco = COCO(str(tmp_path / "a.json"))
    assert {c["name"]: c["id"] for c in coco.loadCats(coco.getCatIds())} == {"scratch": 1, "pit": 2}
    for i, m in enumerate(masks):
        (ann,) = coco.loadAnns(coco.getAnnIds(imgIds=i + 1))
        assert np.array_equal(coco.annToMask(ann).astype(bool), m)
        ys, xs = np.nonzero(m)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert ann["area"] == m.sum() and ann["iscrowd"] == 0
    info = json.loads((tmp_path / "a.json").read_text())["info"]
    assert info["defectgen"] == {"seed": 1} and "version" in info


def test_masks_verb_round_trip_through_pycocotools(tmp_path, run_cli):
    code, out, err = run_cli("masks", "--kind", "perlin", "--n", "5", "--size", "48x64", "--seed", "3",
                             "--out", tmp_path / "m")
    assert code == 0, err
    coco = COCO(str(tmp_path / "m" / "annotations.json"))
    assert len(coco.getImgIds()) == 5
    for img in coco.loadImgs(coco.getImgIds()):
        png = read_mask(tmp_path / "m" / img["file_name"])
        assert png.shape == (48, 64) and png.any()
        (ann,) = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        assert np.array_equal(coco.annToMask(ann).astype(bool), png)
        ys, xs = np.nonzero(png)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    info = coco.dataset["info"]["defectgen"]
    assert info["params"]["seed"] == 3 and info["generator"]["kind"] == "perlin"
