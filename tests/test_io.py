"""Image and dataset reading: every layout, every bit depth and channel count, and the bad inputs."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from defectgen.errors import DefectgenError
from defectgen.io import open_dataset, read_image, read_mask, write_image
from defectgen.io.images import binarize_mask
from tests.conftest import square_mask, texture, write_png


def test_gray_rgb_rgba_and_16_bit(tmp_path, rng):
    gray = texture(rng, 8, 10)
    rgb = texture(rng, 8, 10, 3)
    rgba = np.dstack([rgb, np.full((8, 10), 128, np.uint8)])
    deep = (rng.integers(0, 65535, (8, 10))).astype(np.uint16)
    write_png(tmp_path / "g.png", gray)
    write_png(tmp_path / "c.png", rgb)
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    cv2.imwrite(str(tmp_path / "d.tif"), deep)

    g, c, a, d = (read_image(tmp_path / n) for n in ("g.png", "c.png", "a.png", "d.tif"))
    assert g.shape == (8, 10, 1) and g.dtype == np.uint8 and np.array_equal(g[:, :, 0], gray)
    assert c.shape == (8, 10, 3) and np.array_equal(c, rgb)  # RGB order, not OpenCV's BGR
    assert a.shape == (8, 10, 3) and np.array_equal(a, rgb)  # alpha dropped, colour intact
    assert d.dtype == np.uint16 and np.array_equal(d[:, :, 0], deep)


def test_write_image_round_trip_keeps_16_bits(tmp_path, rng):
    deep = rng.integers(0, 65535, (5, 7, 1)).astype(np.uint16)
    write_image(tmp_path / "x.png", deep)
    assert np.array_equal(read_image(tmp_path / "x.png"), deep)
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary behind


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20])
def test_corrupt_image_names_the_file(tmp_path, content):
    bad = tmp_path / "broken.png"
    bad.write_bytes(content)
    with pytest.raises(DefectgenError) as e:
        read_image(bad)
    assert e.value.path == str(bad) and "\n" not in str(e.value)


def test_mask_encodings_binarize_the_same():
    ones = np.zeros((6, 6), np.uint8)
    ones[2:4, 1:5] = 1
    assert np.array_equal(binarize_mask(ones), binarize_mask(ones * 255))
    assert binarize_mask(ones).sum() == 8
    noisy = ones * 250 + 3  # JPEG-like ringing around a 0/255 mask is not defect
    assert np.array_equal(binarize_mask(noisy), ones.astype(bool))
    assert not binarize_mask(np.zeros((4, 4), np.uint8)).any()


def test_mask_size_mismatch_names_mask_and_image(tmp_path):
    write_png(tmp_path / "m.png", square_mask(10, 12, 1, 1, 3))
    with pytest.raises(DefectgenError) as e:
        read_mask(tmp_path / "m.png", (10, 10), "img.png")
    assert "m.png" in str(e.value) and "12x10" in str(e.value) and "10x10" in str(e.value)


def test_mvtec_layout(mvtec_dir):
    ds = open_dataset(mvtec_dir)
    assert ds.format == "mvtec"
    assert {s: len(ds.select(split=s)) for s in ds.splits} == {"train": 4, "test": 4, "labeled": 2}
    assert len(ds.select(split="test", normal=False)) == 2
    assert ds.classes == ["scratch"]
    defect = ds.select(split="test", normal=False)[1]
    assert defect.mask.sum() == 36 and defect.mask[5, 5] and not defect.mask[0, 0]
    assert defect.boxes[0].to_coco() == [5.0, 5.0, 6.0, 6.0]
    assert all(s.is_normal for s in ds.select(split="train"))


def test_folder_and_pairs_layouts(mvtec_dir):
    folder = open_dataset(mvtec_dir / "train" / "good")
    assert folder.format == "folder" and len(folder) == 4 and all(s.is_normal for s in folder)
    pairs = open_dataset(mvtec_dir / "labeled")
    assert pairs.format == "pairs" and len(pairs) == 2  # the *_mask.png files are not images of their own
    s = pairs[0]
    assert s.class_name == "scratch" and s.mask.sum() == 16
    assert open_dataset(mvtec_dir / "labeled", format="folder").format == "folder"


def _voc_xml(name: str, w: int, h: int, boxes: list[tuple[str, int, int, int, int]]) -> str:
    objects = "".join(
        f"<object><name>{c}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax>"
        f"</bndbox></object>" for c, x0, y0, x1, y1 in boxes
    )
    return f"<annotation><filename>{name}</filename><size><width>{w}</width><height>{h}</height>" \
           f"<depth>1</depth></size>{objects}</annotation>"


def test_voc_layout_with_splits(tmp_path, rng):
    root = tmp_path / "voc"
    for split in ("train", "test"):
        write_png(root / split / "images" / "pit_1.jpg", texture(rng, 20, 30))
        (root / split / "annotations").mkdir(parents=True)
        (root / split / "annotations" / "pit_1.xml").write_text(
            _voc_xml("pit_1.jpg", 30, 20, [("pit", 1, 1, 10, 5), ("pit", 20, 10, 30, 20)]))
    ds = open_dataset(root)
    assert ds.format == "voc" and ds.splits == ["test", "train"] and ds.classes == ["pit"]
    s = ds[0]
    assert [b.to_coco() for b in s.boxes] == [[0.0, 0.0, 10.0, 5.0], [19.0, 9.0, 11.0, 11.0]]
    box_mask = s.defect_mask()  # boxes become box masks
    assert box_mask.sum() == 10 * 5 + 11 * 11 and box_mask[19, 29]


def test_voc_box_outside_image_is_an_error(tmp_path, rng):
    root = tmp_path / "voc"
    write_png(root / "images" / "a.png", texture(rng, 20, 30))
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "a.xml").write_text(_voc_xml("a.png", 30, 20, [("pit", 5, 5, 40, 10)]))
    with pytest.raises(DefectgenError) as e:
        open_dataset(root)[0]
    assert "a.xml" in str(e.value) and "outside" in str(e.value)


def test_coco_polygons_and_rle(tmp_path, rng):
    from defectgen.io.coco import encode_rle

    write_png(tmp_path / "images" / "a.png", texture(rng, 20, 20))
    write_png(tmp_path / "images" / "b.png", texture(rng, 20, 20))
    rle_mask = np.zeros((20, 20), bool)
    rle_mask[3:6, 4:9] = True
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 20},
                   {"id": 2, "file_name": "b.png", "height": 20, "width": 20}],
        "categories": [{"id": 7, "name": "dent"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 2, 8, 8], "iscrowd": 0,
             "segmentation": [[2, 2, 10, 2, 10, 10, 2, 10]]},
            {"id": 2, "image_id": 2, "category_id": 7, "bbox": [4, 3, 5, 3], "iscrowd": 0,
             "segmentation": encode_rle(rle_mask)},
        ],
    }
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    ds = open_dataset(tmp_path / "coco.json")
    assert ds.format == "coco" and ds.classes == ["dent"]
    a, b = ds[0], ds[1]
    assert a.class_name == "dent" and 60 <= a.mask.sum() <= 81 and a.mask[5, 5] and not a.mask[15, 15]
    assert np.array_equal(b.mask, rle_mask)


@pytest.mark.parametrize("lie,expected", [
    ("missing_image", "does not exist"),
    ("box_outside", "outside"),
    ("wrong_size", "says a.png is 50x50"),
    ("unknown_image_id", "unknown image id"),
])
def test_coco_file_that_lies(tmp_path, rng, lie, expected):
    write_png(tmp_path / "a.png", texture(rng, 20, 20))
    image = {"id": 1, "file_name": "a.png", "height": 20, "width": 20}
    ann = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0}
    if lie == "missing_image":
        image["file_name"] = "nope.png"
    elif lie == "box_outside":
        ann["bbox"] = [15, 15, 10, 10]
    elif lie == "wrong_size":
        image["height"] = image["width"] = 50
    else:
        ann["image_id"] = 9
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps({"images": [image], "annotations": [ann], "categories": [{"id": 1, "name": "x"}]}))
    with pytest.raises(DefectgenError) as e:
        list(open_dataset(tmp_path))
    assert "annotations.json" in str(e.value) and expected in str(e.value)


def test_missing_folder_and_empty_folder(tmp_path):
    with pytest.raises(DefectgenError, match="no such file or folder"):
        open_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DefectgenError, match="no images found"):
        open_dataset(tmp_path / "empty")


def test_on_bad_skip_counts_unreadable(tmp_path, rng):
    write_png(tmp_path / "ok.png", texture(rng))
    (tmp_path / "bad.png").write_bytes(b"garbage")
    with pytest.raises(DefectgenError, match="bad.png"):
        list(open_dataset(tmp_path))
    ds = open_dataset(tmp_path, on_bad="skip")
    assert len(list(ds)) == 1 and len(ds.skipped) == 1 and "bad.png" in ds.skipped[0]
