"""COCO written through pycocotools reads back to exactly the masks that were written: one annotation per
connected region (8-connectivity), image and annotation ids from 1, for every writer."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from pycocotools.coco import COCO

from defectgen.io import Box, Sample, read_mask
from defectgen.io.coco import CocoBuilder
from tests.conftest import texture


def test_builder_round_trip(tmp_path):
    masks = []
    builder = CocoBuilder(["scratch"])
    for i in range(3):
        m = np.zeros((30, 40), bool)
        m[3 + i:9 + i, 5:20 - i] = True
        m[25, 35] = True  # a second, disjoint blob: a second annotation
        masks.append(m)
        builder.add(Sample(m[:, :, None].astype(np.uint8), m, "scratch" if i else "pit"), f"{i}.png")
    empty = np.zeros((30, 40), bool)
    builder.add(Sample(empty[:, :, None].astype(np.uint8), empty, "pit"), "empty.png")
    builder.save(tmp_path / "a.json", {"defectgen": {"seed": 1}})
    coco = COCO(str(tmp_path / "a.json"))
    assert {c["name"]: c["id"] for c in coco.loadCats(coco.getCatIds())} == {"scratch": 1, "pit": 2}
    assert sorted(coco.getImgIds()) == [1, 2, 3, 4] and not coco.getAnnIds(imgIds=4)
    for i, m in enumerate(masks):
        big, dot = coco.loadAnns(coco.getAnnIds(imgIds=i + 1))
        assert np.array_equal(coco.annToMask(big).astype(bool) | coco.annToMask(dot).astype(bool), m)
        assert dot["bbox"] == [35, 25, 1, 1] and dot["area"] == 1
        ys, xs = np.nonzero(m[:20])
        assert big["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert big["area"] == m[:20].sum() and big["iscrowd"] == 0
    info = json.loads((tmp_path / "a.json").read_text())["info"]
    assert info["defectgen"] == {"seed": 1} and "version" in info


def _two_regions() -> tuple[np.ndarray, list[np.ndarray]]:
    """A 20 x 24 mask of two regions that touch only across a gap (4-connected nowhere, 8-connected nowhere)."""
    a, b = np.zeros((20, 24), bool), np.zeros((20, 24), bool)
    a[2:6, 3:9] = True
    b[10:17, 12:20] = True
    return a | b, [a, b]


def test_add_makes_one_annotation_per_region_with_ids_from_1(tmp_path):
    mask, parts = _two_regions()
    diagonal = np.zeros((20, 24), bool)
    diagonal[1, 1] = diagonal[2, 2] = True  # touching corners: one region under 8-connectivity
    builder = CocoBuilder(root=tmp_path)
    image = np.zeros((20, 24, 1), np.uint8)
    first = builder.add(Sample(image, mask, "dent", path=tmp_path / "images" / "a.png",
                               mask_path=tmp_path / "masks" / "a.png", source=Path("/n/a.png"), seed=7))
    second = builder.add(Sample(image, diagonal, "dent"), "b.png")
    assert (first, second) == (1, 2)
    builder.save(tmp_path / "annotations.json")
    coco = COCO(str(tmp_path / "annotations.json"))
    assert coco.imgs[1]["file_name"] == "images/a.png" and coco.imgs[1]["mask_file"] == "masks/a.png"
    assert coco.imgs[1]["source"] == "/n/a.png" and coco.imgs[1]["seed"] == 7
    anns = coco.loadAnns(coco.getAnnIds(imgIds=1))
    assert [a["id"] for a in anns] == [1, 2] and len(coco.getAnnIds(imgIds=2)) == 1
    for ann, part in zip(anns, parts, strict=True):
        assert np.array_equal(coco.annToMask(ann).astype(bool), part)
        assert ann["area"] == part.sum()


def test_ids_do_not_depend_on_the_order_samples_are_added(tmp_path):
    mask, _ = _two_regions()
    image = np.zeros((20, 24, 1), np.uint8)
    files = []
    for order in ([0, 1, 2], [2, 0, 1]):
        builder = CocoBuilder()
        for i in order:
            builder.add(Sample(image, mask, ["a", "b", "a"][i]), f"{i}.png", image_id=i + 1)
        data = builder.to_dict()
        files.append((data["images"], data["annotations"], data["categories"]))
    assert files[0] == files[1]


def test_readers_round_trip_a_written_sample(tmp_path, rng):
    from defectgen.io import open_dataset, write_image

    mask, parts = _two_regions()
    image = texture(rng, 20, 24)[:, :, None]
    write_image(tmp_path / "images" / "a.png", image)
    builder = CocoBuilder(root=tmp_path)
    builder.add(Sample(image, mask, "dent", path=tmp_path / "images" / "a.png"))
    builder.save(tmp_path / "annotations.json")
    (back,) = list(open_dataset(tmp_path))
    assert np.array_equal(back.image, image) and np.array_equal(back.mask, mask) and back.class_name == "dent"
    assert sorted(b.to_coco() for b in back.boxes) == sorted(Box.from_mask(p).to_coco() for p in parts)


def test_masks_verb_round_trip_through_pycocotools(tmp_path, run_cli):
    code, out, err = run_cli("masks", "--kind", "perlin", "--n", "5", "--size", "48x64", "--seed", "3",
                             "--out", tmp_path / "m")
    assert code == 0, err
    coco = COCO(str(tmp_path / "m" / "annotations.json"))
    assert len(coco.getImgIds()) == 5
    for img in coco.loadImgs(coco.getImgIds()):
        png = read_mask(tmp_path / "m" / img["file_name"])
        assert png.shape == (48, 64) and png.any()
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        assert len(anns) == cv2.connectedComponents(png.astype(np.uint8), connectivity=8)[0] - 1  # one per region
        union = np.zeros_like(png)
        for ann in anns:
            part = coco.annToMask(ann).astype(bool)
            ys, xs = np.nonzero(part)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            union |= part
        assert np.array_equal(union, png)
    assert sorted(coco.getImgIds()) == [1, 2, 3, 4, 5]
    assert sorted(coco.getAnnIds()) == list(range(1, len(coco.getAnnIds()) + 1))
    info = coco.dataset["info"]["defectgen"]
    assert info["params"]["seed"] == 3 and info["generator"]["kind"] == "perlin"
