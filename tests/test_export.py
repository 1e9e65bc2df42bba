"""`defectgen export`: every format read back through defectgen's own readers gives the same images, classes and
boxes (to a pixel) and, for YOLO-seg and MVTec, the masks (holes and several regions included); bad input is one
line, exit 2 and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from defectgen.errors import DefectgenError
from defectgen.io import Sample, open_dataset, write_image
from defectgen.io.coco import CocoBuilder
from defectgen.io.export import ExportOptions, make_plan
from defectgen.io.yolo import mask_polygons, polygon_line, read_labels

H, W = 40, 48


def _image(rng: np.random.Generator) -> np.ndarray:
    """A smooth RGB image (JPEG keeps it close, so VOC's images can be compared too)."""
    ramp = np.linspace(40, 200, W)[None, :, None] + np.linspace(0, 30, H)[:, None, None]
    return np.clip(ramp + rng.normal(0, 2, (H, W, 3)), 0, 255).astype(np.uint8)


def _ring(cy: int, cx: int, outer: int, inner: int) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    cv2.circle(m, (cx, cy), outer, 1, -1)
    cv2.circle(m, (cx, cy), inner, 0, -1)
    return m.astype(bool)


def _masks() -> list[list[tuple[str, np.ndarray]]]:
    """Per image, (class, mask) pairs: holes, an island inside a hole, several regions, a one-pixel-wide line, a
    lone pixel, two classes in one image, and a normal image (no masks)."""
    ring = _ring(20, 20, 11, 5)
    ring[19:21, 19:21] = True  # an island in the hole: a region of its own
    ring[2:6, 40:46] = True  # and a blob apart
    blobs = np.zeros((H, W), bool)
    blobs[5:12, 5:15] = True
    blobs[25:35, 30:44] = True
    thin = np.zeros((H, W), bool)
    thin[np.arange(5, 30), np.arange(10, 35)] = True  # a diagonal scratch, one pixel wide
    thin[35, 3] = True  # a lone pixel
    holes = np.zeros((H, W), bool)
    holes[4:36, 6:42] = True
    holes[10:16, 12:20] = holes[20:30, 26:36] = False  # two holes
    left, right = np.zeros((H, W), bool), np.zeros((H, W), bool)
    left[8:30, 4:14], right[10:20, 30:40] = True, True
    return [[("scratch", ring)], [("pit", blobs)], [("scratch", thin)], [("pit", holes)], [],
            [("scratch", left), ("pit", right)]]


@pytest.fixture
def coco_set(tmp_path: Path, rng) -> Path:
    """A COCO set as synthesize writes it (CocoBuilder), with holes, several regions and two classes."""
    root = tmp_path / "set"
    builder = CocoBuilder(["scratch", "pit"], root=root)
    for i, parts in enumerate(_masks()):
        write_image(root / "images" / f"{i:03d}.png", _image(rng))
        image_id = builder.add_image(f"images/{i:03d}.png", H, W)
        for name, mask in parts:
            builder.add_mask(image_id, mask, name)
    builder.save(root / "annotations.json")
    return root


@pytest.fixture
def normals(tmp_path: Path, rng) -> Path:
    for i in range(4):
        write_image(tmp_path / "good" / f"n{i}.png", _image(rng))
    return tmp_path / "good"


def _export(run_cli, source: Path, fmt: str, out: Path, *extra: str) -> dict:
    code, stdout, err = run_cli("export", source, "--format", fmt, "--out", out, *extra)
    assert code == 0, err
    assert f"as {fmt}" in stdout
    return json.loads((out / "defectgen-export.json").read_text())


def _pairs(out: Path, manifest: dict) -> list[tuple[Sample, Sample]]:
    """(source sample, exported sample read back) for every exported image, through the manifest's file map."""
    back = open_dataset(out)
    by_file = {(out / f["file"]).resolve(): f["source"] for f in manifest["files"]}
    sources = {}
    for path in {manifest["source"], manifest["normals"]} - {None}:
        ds = open_dataset(path)
        sources.update({str(e.image_path): (ds, e) for e in ds.entries})
    pairs = []
    for entry in back.entries:
        ds, source = sources[by_file[entry.image_path.resolve()]]
        pairs.append((ds.load(source), back.load(entry)))
    assert len(pairs) == len(manifest["files"])
    return pairs


def _boxes(sample: Sample) -> list[tuple]:
    return sorted((float(b.x0), float(b.y0), float(b.x1), float(b.y1), b.label) for b in sample.boxes)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_yolo_round_trip_and_data_yaml(coco_set, normals, tmp_path, run_cli):
    out = tmp_path / "yolo"
    manifest = _export(run_cli, coco_set, "yolo", out, "--with", normals, "--seed", "3")
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data == {"path": str(out.resolve()), "train": "images/train", "val": "images/val",
                    "names": {0: "pit", 1: "scratch"}}
    assert manifest["format"] == "yolo" and manifest["seed"] == 3 and manifest["source"] == str(coco_set)
    assert manifest["version"] and manifest["counts"]["images"] == 10 and manifest["counts"]["normal_images"] == 5
    ds = open_dataset(out)
    assert ds.format == "yolo" and ds.splits == ["train", "val"] and ds.classes == ["pit", "scratch"]
    assert len(ds.select(split="val")) == manifest["counts"]["splits"]["val"] > 0
    for source, back in _pairs(out, manifest):
        assert np.array_equal(source.image, back.image)
        assert back.class_name == source.class_name and back.is_normal == source.is_normal
        assert _boxes(back) == _boxes(source)  # one box per region, to the pixel
        label = out / "labels" / back.split / f"{back.path.stem}.txt"
        assert label.is_file() and (label.read_text() == "") == source.is_normal
    assert sum(len(_boxes(s)) for s, _ in _pairs(out, manifest)) == manifest["counts"]["objects"] == 10


def test_yolo_seg_traces_holes_and_every_region(coco_set, tmp_path, run_cli):
    out = tmp_path / "seg"
    manifest = _export(run_cli, coco_set, "yolo-seg", out)
    lines = {p.stem: p.read_text().splitlines() for p in out.glob("labels/*/*.txt")}
    assert [len(lines[f"{i:06d}"]) for i in range(6)] == [3, 2, 2, 1, 0, 2]  # one line per region
    assert all(len(line.split()) >= 7 for ls in lines.values() for line in ls)  # >= 3 points: never a box line
    ious = []
    for source, back in _pairs(out, manifest):
        assert np.array_equal(source.image, back.image) and back.class_name == source.class_name
        if source.is_normal:
            assert back.is_normal
            continue
        ious.append(_iou(back.mask, source.mask))
        assert _boxes(back) == _boxes(source)
    assert min(ious) >= 0.95
    ring = next(b for s, b in _pairs(out, manifest) if b.path.stem == "000000")
    assert ring.mask[20, 17] == 0 and ring.mask[20, 20] and ring.mask[20, 10]  # hole open, island and ring kept


def _real_looking_masks() -> list[np.ndarray]:
    """Perlin masks thresholded low (blobs, some with holes) and blurred noise cut a little below its median
    (corrosion-like patches full of holes and islands)."""
    from defectgen.masks import MaskGenerator

    gen = MaskGenerator("perlin", seed=0, threshold=0.2, max_area=0.6)
    rng = np.random.default_rng(1)
    stains = [cv2.GaussianBlur(rng.random((64, 80)).astype(np.float32), (0, 0), 2) > 0.47 for _ in range(8)]
    return [gen(i, 64, 80)[0] for i in range(24)] + stains


def test_polygons_of_real_looking_masks_fill_back(tmp_path):
    label, ious, holes = tmp_path / "labels" / "m.txt", [], 0
    label.parent.mkdir()
    for mask in _real_looking_masks():
        _, links = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        holes += int((links[0][:, 3] != -1).sum())
        label.write_text("".join(polygon_line(0, p, 64, 80) + "\n" for p in mask_polygons(mask)))
        _, back = read_labels(label, {0: "defect"}).at_size(64, 80)
        ious.append(_iou(back, mask))
    assert holes >= 50
    assert min(ious) >= 0.95


def test_mvtec_export_reads_back_and_validate_takes_it_as_test(coco_set, normals, tmp_path, run_cli):
    from defectgen.evaluate.data import load_test

    out = tmp_path / "mv"
    manifest = _export(run_cli, coco_set, "mvtec", out, "--with", normals, "--val-share", "0.4")
    assert {p.name for p in out.iterdir()} >= {"train", "test", "ground_truth", "defectgen-export.json"}
    assert manifest["counts"]["splits"] == {"test/good": 2, "test/pit": 2, "test/scratch": 3, "train/good": 3}
    for cls in ("pit", "scratch"):  # anomalib pairs them by sorted name: <stem>.png with <stem>_mask.png
        images = sorted(p.stem for p in (out / "test" / cls).glob("*.png"))
        assert [f"{s}_mask" for s in images] == sorted(p.stem for p in (out / "ground_truth" / cls).glob("*.png"))
    ds = open_dataset(out)
    assert ds.format == "mvtec" and ds.classes == ["pit", "scratch"]
    for source, back in _pairs(out, manifest):
        assert np.array_equal(source.image, back.image) and back.is_normal == source.is_normal
        if not source.is_normal:
            assert np.array_equal(back.mask, source.mask) and back.class_name == source.class_name
    test = load_test(out, 32, 1, None, 0, False)
    assert test.labels.sum() == 5 and (~test.labels).sum() == 2


def test_voc_round_trip_and_torchvision_reads_it(coco_set, normals, tmp_path, run_cli):
    from torchvision.datasets import VOCDetection

    out = tmp_path / "voc-root" / "VOCdevkit" / "VOC2012"
    manifest = _export(run_cli, coco_set, "voc", out, "--with", normals)
    for source, back in _pairs(out, manifest):
        assert np.abs(source.image.astype(int) - back.image.astype(int)).mean() < 3  # JPEG
        assert back.class_name == source.class_name and _boxes(back) == _boxes(source)
    sets = {n: (out / "ImageSets" / "Main" / f"{n}.txt").read_text().split() for n in ("train", "val", "trainval")}
    assert sorted(sets["train"] + sets["val"]) == sets["trainval"] == [f"{i:06d}" for i in range(10)]
    voc = VOCDetection(tmp_path / "voc-root", year="2012", image_set="train")
    assert len(voc) == len(sets["train"])
    _, target = voc[0]
    assert target["annotation"]["size"] == {"width": str(W), "height": str(H), "depth": "3"}


def test_chained_exports_keep_the_boxes(coco_set, tmp_path, run_cli):
    """COCO -> VOC -> YOLO: a box-only source passes its own boxes on."""
    voc, yolo = tmp_path / "voc", tmp_path / "yolo"
    voc_files = {(voc / f["file"]).resolve(): f["source"] for f in _export(run_cli, coco_set, "voc", voc)["files"]}
    manifest = _export(run_cli, voc, "yolo", yolo)
    coco = open_dataset(coco_set)
    by_path = {str(e.image_path): e for e in coco.entries}
    for through_voc, back in _pairs(yolo, manifest):
        original = coco.load(by_path[voc_files[through_voc.path.resolve()]])
        assert _boxes(back) == _boxes(through_voc) == _boxes(original)


def test_split_depends_only_on_seed_and_share(coco_set, normals, tmp_path):
    def split(seed: int, share: float = 0.2) -> list[str]:
        plan = make_plan(ExportOptions(coco_set, "yolo", tmp_path / "o", normals, share, seed))
        return [item.split for item in plan.items]

    assert split(0) == split(0) and len(split(0)) == 10
    assert {tuple(split(s)) for s in range(6)} != {tuple(split(0))}
    assert split(0, 0.5).count("val") == 6  # half of each class, rounded up: 1 of 2 pit, 2 of 3 scratch, 3 of 5 good
    plan = make_plan(ExportOptions(coco_set, "mvtec", tmp_path / "o", normals, 0.5, 0))
    assert [i.split for i in plan.items if not i.normal] == ["test"] * 5


def test_yolo_folder_without_data_yaml(tmp_path):
    root = tmp_path / "y"
    for split in ("train", "val"):
        write_image(root / "images" / split / "a.png", np.zeros((20, 30, 1), np.uint8))
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "a.txt").write_text("1 0.5 0.5 0.2 0.4\n0 0.1 0.1 0.3 0.1 0.3 0.3\n")
    (root / "classes.txt").write_text("crack\nscratch\n")
    ds = open_dataset(root)
    assert ds.format == "yolo" and ds.splits == ["train", "val"] and ds.classes == ["crack", "scratch"]
    train, val = ds.select(split="train")[0], ds.select(split="val")[0]
    assert val.is_normal and not train.is_normal
    assert _boxes(train)[1] == (12.0, 6.0, 18.0, 14.0, "scratch")
    assert train.mask[2:7, 3:10].any() and train.mask[6:14, 12:18].all()  # polygon and box both painted
    (root / "labels" / "train" / "a.txt").write_text("5 0.5 0.5 0.2 0.4\n")
    with pytest.raises(DefectgenError, match="line 1: class 5"):
        open_dataset(root)


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


def test_bad_input_is_one_line_exit_2_and_nothing_written(coco_set, normals, tmp_path, run_cli, rng):
    out = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    defects_only = tmp_path / "defects"  # no normal image of its own: mvtec needs --with
    builder = CocoBuilder(root=defects_only)
    write_image(defects_only / "images" / "a.png", _image(rng))
    builder.add_mask(builder.add_image("images/a.png", H, W), _masks()[1][0][1], "pit")
    builder.save(defects_only / "annotations.json")
    cases = [
        ((coco_set, "--format", "darknet"), "--format"),
        ((coco_set, "--format", "yolo", "--val-share", "1"), "--val-share"),
        ((empty, "--format", "yolo"), "no images found"),
        ((normals, "--format", "yolo"), "no defect images"),
        ((defects_only, "--format", "mvtec"), "--with"),
        ((coco_set, "--format", "yolo", "--with", empty), "no images found"),
    ]
    for args, says in cases:
        code, _, err = run_cli("export", *args, "--out", out)
        assert code == 2 and says in _one_error_line(err) and not out.exists(), (args, err)
    inside = coco_set / "images" / "exported"
    code, _, err = run_cli("export", coco_set, "--format", "yolo", "--out", inside)
    assert code == 2 and "inside the input" in _one_error_line(err) and not inside.exists()


def test_corrupt_image_is_named_and_the_half_export_removed(coco_set, tmp_path, run_cli):
    (coco_set / "images" / "003.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    code, _, err = run_cli("export", coco_set, "--format", "yolo-seg", "--out", out)
    assert code == 2 and "003.png" in _one_error_line(err) and not out.exists()


def test_existing_folder_needs_overwrite_and_only_defectgens(coco_set, tmp_path, run_cli):
    out = tmp_path / "out"
    _export(run_cli, coco_set, "yolo", out)
    code, _, err = run_cli("export", coco_set, "--format", "voc", "--out", out)
    assert code == 2 and "--overwrite" in _one_error_line(err) and (out / "data.yaml").is_file()
    _export(run_cli, coco_set, "voc", out, "--overwrite")
    assert not (out / "data.yaml").exists() and (out / "Annotations").is_dir()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    code, _, err = run_cli("export", coco_set, "--format", "yolo", "--out", mine, "--overwrite")
    assert code == 2 and (mine / "notes.txt").read_text() == "keep" and len(list(mine.iterdir())) == 1
