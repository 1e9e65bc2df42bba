"""The supervised `seg` detector, the detector registry, the labeled-defect baselines of `validate` and COCO mAP,
on tiny data made here (32x32 gray textures with bright or dark squares; tiny random backbone; CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from defectgen.detect.base import DetectorOptions, detector_names, get_detector, load_detector
from defectgen.errors import DefectgenError
from defectgen.evaluate import ValidationConfig, run_validation
from defectgen.io.coco import CocoBuilder
from defectgen.metrics import coco_map, pixel_auroc
from tests.conftest import texture, write_png

S = 32


def _square(rng, img, value=250, size=None):
    """img with a size x size square of `value` at a random place; (image, bool mask, [x, y, w, h])."""
    size = size or int(rng.integers(6, 11))
    y, x = (int(v) for v in rng.integers(1, S - size - 1, 2))
    img, m = img.copy(), np.zeros((S, S), bool)
    img[y:y + size, x:x + size] = value
    m[y:y + size, x:x + size] = True
    return img, m, [x, y, size, size]


def _normals(rng, n):
    return np.stack([texture(rng, S, S) for _ in range(n)])[..., None]


def _defects(rng, n, value=250):
    imgs, masks = [], []
    for img in _normals(rng, n):
        im, m, _ = _square(rng, img, value)
        imgs.append(im)
        masks.append(m)
    return np.stack(imgs), np.stack(masks)


@pytest.fixture(scope="module")
def backbone():
    from defectgen.detect import load_backbone

    return load_backbone("tiny")


def test_registry_lists_every_detector_and_rejects_unknown_names():
    assert {"ast", "exdd", "seg"} <= set(detector_names())
    assert get_detector("seg").supervised and not get_detector("exdd").supervised
    with pytest.raises(DefectgenError, match="unknown detector 'yolo'"):
        get_detector("yolo")


def test_seg_learns_bright_squares(backbone):
    rng = np.random.default_rng(0)
    normals = _normals(rng, 12)
    defects, masks = _defects(rng, 12)
    det = get_detector("seg").from_options(backbone, DetectorOptions(steps=150, batch_size=8, lr=3e-3))
    det.fit(normals, defects, masks, class_names=["spot"])
    held_out, held_masks = _defects(rng, 4)
    maps, scores = det.predict(np.concatenate([_normals(rng, 4), held_out]))
    assert maps.shape == (8, S, S) and 0 <= maps.min() and maps.max() <= 1
    assert pixel_auroc(held_masks, maps[4:]) > 0.9
    assert det.summary()["loss_last"] < 0.8 * det.summary()["loss_first"]
    _, _, boxes = det.predict_with_boxes(held_out)
    found = [b for bs in boxes for b in bs]
    assert found and all(b["class"] == "spot" and 0 < b["score"] <= 1 and len(b["bbox"]) == 4 for b in found)


def test_seg_without_defects_fails_clearly(backbone):
    rng = np.random.default_rng(1)
    det = get_detector("seg").from_options(backbone, DetectorOptions(steps=2))
    for defects, masks in ((None, None), (np.zeros((0, S, S, 1), np.uint8), np.zeros((0, S, S), bool)),
                           (_normals(rng, 2), np.zeros((2, S, S), bool))):
        with pytest.raises(DefectgenError, match="no defect images with masks") as e:
            det.fit(_normals(rng, 4), defects, masks)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["ast", "exdd", "seg"])
def test_save_load_round_trip_through_the_registry(backbone, tmp_path, name):
    rng = np.random.default_rng(2)
    normals = _normals(rng, 8)
    spots, spot_masks = _defects(rng, 3)
    holes, hole_masks = _defects(rng, 3, value=5)
    defects, masks = np.concatenate([spots, holes]), np.concatenate([spot_masks, hole_masks])
    labels = np.concatenate([spot_masks * 1, hole_masks * 2]).astype(np.uint8)
    det = get_detector(name).from_options(backbone, DetectorOptions(steps=6, batch_size=4, coreset_ratio=0.5))
    det.fit(normals, defects, masks, cleans=normals[:6], labels=labels, class_names=["spot", "hole"])
    det.save(tmp_path / f"{name}.safetensors")
    again = load_detector(tmp_path / f"{name}.safetensors", backbone)
    assert type(again) is type(det)
    test = np.concatenate([_normals(rng, 2), _defects(rng, 2)[0]])
    (m1, s1), (m2, s2) = det.predict(test), again.predict(test)
    assert np.allclose(s1, s2, atol=1e-5) and np.allclose(m1, m2, atol=1e-5)
    if name == "seg":
        assert again.class_names == ["spot", "hole"] and again.head.out_channels == 3
        assert det.predict_with_boxes(test)[2] == again.predict_with_boxes(test)[2]
    other = "ast" if name != "ast" else "exdd"
    with pytest.raises(DefectgenError, match="not an? "):  # a file of another detector is refused
        get_detector(other).load(tmp_path / f"{name}.safetensors", backbone)


def test_coco_map_matches_hand_computed_values():
    gt = [[{"bbox": [0, 0, 10, 10], "class": "a"}], [{"bbox": [5, 5, 10, 10], "class": "a"}],
          [{"bbox": [2, 2, 8, 8], "class": "b"}], []]
    # a: a false positive on the normal image ranks first, then the two hits: precision 2/3 at every recall
    det = [[{"bbox": [0, 0, 10, 10], "score": 0.8, "class": "a"}],
           [{"bbox": [5, 5, 10, 10], "score": 0.7, "class": "a"}],
           [{"bbox": [2, 2, 8, 8], "score": 0.6, "class": "a"}],  # b's box, named a
           [{"bbox": [20, 20, 5, 5], "score": 0.9, "class": "a"}]]
    r = coco_map(gt, det)
    assert r["per_class"]["a"]["map50"] == pytest.approx(2 / 3, abs=1e-3)
    assert r["per_class"]["b"]["map50"] == 0.0 and r["per_class"]["b"]["boxes"] == 1
    assert r["map50"] == pytest.approx(1 / 3, abs=1e-3)
    assert r["agnostic_map50"] == pytest.approx(3 / 4, abs=1e-3)  # 1 FP then 3 hits: precision 3/4
    assert coco_map(gt, [[], [], [], []])["map50"] == 0.0
    shifted = [[{"bbox": [3, 0, 10, 10], "score": 0.9, "class": "a"}], [], [], []]  # IoU 7/13: only at 0.5
    r = coco_map([gt[0], [], [], []], shifted)
    assert r["map50"] == pytest.approx(1.0) and r["map"] == pytest.approx(0.1)


# --- validate with labeled defects ---------------------------------------------------------------------------


def _voc_xml(name: str, boxes: list[tuple[str, list[int]]]) -> str:
    objects = "".join(f"<object><name>{c}</name><bndbox><xmin>{x + 1}</xmin><ymin>{y + 1}</ymin>"
                      f"<xmax>{x + w}</xmax><ymax>{y + h}</ymax></bndbox></object>" for c, (x, y, w, h) in boxes)
    return (f"<annotation><filename>{name}</filename><size><width>{S}</width><height>{S}</height><depth>1</depth>"
            f"</size>{objects}</annotation>")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """mv: MVTec layout (train/good 8, test good 3 + spot 3, labeled/spot 3); syn: a synthetic COCO set of 4 spots
    on the training normals; voc: a two-class test set (3 normal, 3 spot, 3 hole); lab2: labeled spots and holes
    as image + mask pairs."""
    root = tmp_path_factory.mktemp("seg")
    rng = np.random.default_rng(0)
    mv = root / "mv"
    train = [texture(rng, S, S) for _ in range(8)]
    for i, img in enumerate(train):
        write_png(mv / "train" / "good" / f"{i:03d}.png", img)
    for i in range(3):
        write_png(mv / "test" / "good" / f"{i:03d}.png", texture(rng, S, S))
        img, m, _ = _square(rng, texture(rng, S, S))
        write_png(mv / "test" / "spot" / f"{i:03d}.png", img)
        write_png(mv / "ground_truth" / "spot" / f"{i:03d}_mask.png", m.astype(np.uint8) * 255)
        img, m, _ = _square(rng, texture(rng, S, S))
        write_png(mv / "labeled" / "spot" / f"l{i}.png", img)
        write_png(mv / "labeled" / "spot" / f"l{i}_mask.png", m.astype(np.uint8) * 255)
    syn, coco = root / "syn", CocoBuilder()
    for i in range(4):
        img, m, _ = _square(rng, train[i])
        write_png(syn / "images" / f"{i:06d}.png", img)
        coco.add_mask(coco.add_image(f"images/{i:06d}.png", S, S, source=str(mv / "train" / "good" / f"{i:03d}.png")),
                      m, "spot" if i % 2 else "hole")
    coco.save(syn / "annotations.json")
    voc = root / "voc"
    for i in range(9):
        kind = ("good", "spot", "hole")[i % 3]
        img, boxes = texture(rng, S, S), []
        if kind != "good":
            img, _, box = _square(rng, img, 250 if kind == "spot" else 5)
            boxes = [(kind, box)]
        write_png(voc / "images" / f"{i:03d}.png", img)
        (voc / "annotations").mkdir(parents=True, exist_ok=True)
        (voc / "annotations" / f"{i:03d}.xml").write_text(_voc_xml(f"{i:03d}.png", boxes))
    lab2 = root / "lab2"
    for i in range(4):
        kind = ("spot", "hole")[i % 2]
        img, m, _ = _square(rng, texture(rng, S, S), 250 if kind == "spot" else 5)
        write_png(lab2 / kind / f"{i}.png", img)
        write_png(lab2 / kind / f"{i}_mask.png", m.astype(np.uint8) * 255)
    return root


def test_cli_seg_with_labeled_baselines(data, tmp_path, run_cli):
    out = tmp_path / "report"
    code, stdout, stderr = run_cli(
        "validate", "--detector", "seg", "--train", data / "mv" / "train" / "good", "--test", data / "mv",
        "--synthetic", data / "syn", "--real-labeled", data / "mv", "--baselines", "real,copypaste,draem",
        "--resolution", S, "--steps", 10, "--batch-size", 4, "--overlays", 2, "--save-models", "--out", out)
    assert code == 0, stdout + stderr
    report = json.loads((out / "report.json").read_text())
    assert list(report["runs"]) == ["synthetic", "real", "copypaste", "draem"]
    runs = report["runs"]
    assert runs["real"]["real_images"] == 3 and runs["real"]["synthetic_images"] == 0  # MVTec root: labeled/
    assert runs["copypaste"]["synthetic_images"] == 4 and runs["draem"]["synthetic_images"] == 4  # the same count
    assert runs["real"]["classes"] == ["spot"]
    for run in runs.values():
        assert 0 <= run["metrics"]["pixel_auroc"] <= 1 and run["steps"] == 10
    assert report["config"]["real_labeled"] == str(data / "mv") and report["train"]["labeled_defects"] == 3
    assert "coco" not in runs["real"]  # one test class: no box mAP
    assert len(list(out.glob("seg_*.safetensors"))) == 4
    md = (out / "report.md").read_text()
    assert all(f"| {name} |" in md for name in runs)


def test_multi_class_test_set_gets_coco_map_per_class(data, tmp_path):
    out = tmp_path / "report"
    res = run_validation(ValidationConfig(
        "seg", data / "mv" / "train" / "good", data / "voc", out, synthetic=data / "syn",
        baselines=["real", "real+synthetic", "none"], real_labeled=data / "lab2", resolution=S, steps=20, batch_size=4,
        n_overlays=0, progress=False))
    saved = json.loads((out / "report.json").read_text())
    assert list(saved["runs"]) == ["synthetic", "real", "real+synthetic"]
    assert "supervised" in saved["skipped"]["none"]
    assert saved["test"]["boxes"] == {"hole": 3, "spot": 3}
    for name, run in saved["runs"].items():
        coco = run["coco"]
        assert set(coco["per_class"]) == {"hole", "spot"}, name
        for c in ("hole", "spot"):
            assert coco["per_class"][c]["boxes"] == 3
            assert 0 <= coco["per_class"][c]["map50"] <= 1 and 0 <= coco["per_class"][c]["map"] <= 1
        assert 0 <= coco["map50"] <= 1 and 0 <= coco["agnostic_map50"] <= 1
    assert saved["runs"]["real"]["real_images"] == 4
    mixed = saved["runs"]["real+synthetic"]
    assert mixed["real_images"] == 4 and mixed["synthetic_images"] == 4 and set(mixed["classes"]) == {"spot", "hole"}
    assert res["runs"].keys() == saved["runs"].keys()
    md = (out / "report.md").read_text()
    assert "mAP@0.5" in md and "hole mAP@0.5" in md and "Skipped `none`" in md


def _one_line_exit_2(run_cli, out, *args):
    code, stdout, stderr = run_cli("validate", *args, "--resolution", S, "--steps", 2, "--overlays", 0, "--out", out)
    lines = [x for x in (stdout + stderr).strip().splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), stdout + stderr
    assert not out.exists()  # inputs are checked before the output folder is made
    return lines[0]


def test_bad_labeled_inputs_exit_2_with_one_line(data, tmp_path, run_cli):
    base = ["--detector", "seg", "--train", data / "mv" / "train" / "good", "--test", data / "mv",
            "--baselines", "real"]
    plain = tmp_path / "plain"  # images, no masks or boxes
    for i in range(2):
        write_png(plain / f"{i}.png", texture(np.random.default_rng(i), S, S))
    line = _one_line_exit_2(run_cli, tmp_path / "o1", *base, "--real-labeled", plain)
    assert str(plain) in line and "no labeled defects with masks or boxes" in line

    other = tmp_path / "other"  # a class the test set does not have
    img, m, _ = _square(np.random.default_rng(3), texture(np.random.default_rng(4), S, S))
    write_png(other / "crack" / "0.png", img)
    write_png(other / "crack" / "0_mask.png", m.astype(np.uint8) * 255)
    line = _one_line_exit_2(run_cli, tmp_path / "o2", *base, "--real-labeled", other)
    assert str(other) in line and "crack" in line and "test set" in line

    small = tmp_path / "small"  # a 16x16 mask for a 32x32 image
    write_png(small / "spot" / "0.png", img)
    write_png(small / "spot" / "0_mask.png", np.full((16, 16), 255, np.uint8))
    line = _one_line_exit_2(run_cli, tmp_path / "o3", *base, "--real-labeled", small)
    assert "0_mask.png" in line and "16x16" in line


def test_bad_run_choices_exit_2_with_one_line(data, tmp_path, run_cli):
    common = ["--train", data / "mv" / "train" / "good", "--test", data / "mv"]
    empty = tmp_path / "empty"  # a synthetic set with images but no defect annotations
    write_png(empty / "images" / "000000.png", texture(np.random.default_rng(5), S, S))
    coco = CocoBuilder()
    coco.add_image("images/000000.png", S, S)
    coco.save(empty / "annotations.json")
    line = _one_line_exit_2(run_cli, tmp_path / "o1", "--detector", "seg", *common, "--synthetic", empty,
                            "--baselines", "")
    assert str(empty) in line and "no defect masks" in line
    line = _one_line_exit_2(run_cli, tmp_path / "o2", "--detector", "seg", *common, "--baselines", "none")
    assert "nothing to run" in line and "supervised" in line
    line = _one_line_exit_2(run_cli, tmp_path / "o3", "--detector", "exdd", *common, "--baselines", "copypaste")
    assert "--real-labeled" in line
    line = _one_line_exit_2(run_cli, tmp_path / "o5", "--detector", "seg", *common, "--baselines", "real+synthetic",
                            "--real-labeled", data / "mv")
    assert "--synthetic" in line


def test_copypaste_baseline_for_an_anomaly_detector(data, tmp_path):
    res = run_validation(ValidationConfig(
        "exdd", data / "mv", data / "mv", tmp_path / "r", baselines=["copypaste"], real_labeled=data / "mv", n_draem=5,
        resolution=S, coreset_ratio=0.5, n_overlays=0, progress=False))
    run = res["runs"]["copypaste"]
    assert run["synthetic_images"] == 5 and run["positive_bank"] > 0
    assert res["config"]["n_copypaste"] == 5


def test_detection_test_set_without_normals_is_scored_by_map(data, tmp_path):
    """NEU-DET has no normal images: a multi-class box test set still runs (image AUROC undefined, mAP not)."""
    import shutil

    voc = tmp_path / "voc"
    for i in (1, 2, 4, 5):  # spot, hole, spot, hole
        for sub, ext in (("images", "png"), ("annotations", "xml")):
            (voc / sub).mkdir(parents=True, exist_ok=True)
            shutil.copy(data / "voc" / sub / f"{i:03d}.{ext}", voc / sub)
    res = run_validation(ValidationConfig(
        "seg", data / "mv" / "train" / "good", voc, tmp_path / "r", baselines=["real"], real_labeled=data / "lab2",
        resolution=S, steps=2, batch_size=4, n_overlays=1, progress=False))
    run = res["runs"]["real"]
    assert run["metrics"]["image_auroc"] is None and run["metrics"]["pixel_auroc"] is not None
    assert set(run["coco"]["per_class"]) == {"hole", "spot"} and res["test"]["normal"] == 0
    for f in voc.glob("annotations/*.xml"):  # one class left: no mAP to fall back on, so normals are needed
        f.write_text(f.read_text().replace("<name>hole</name>", "<name>spot</name>"))
    with pytest.raises(DefectgenError, match="no normal images"):
        run_validation(ValidationConfig(
            "seg", data / "mv" / "train" / "good", voc, tmp_path / "r2", baselines=["real"], real_labeled=data / "mv",
            resolution=S, steps=2, progress=False))


def _voc_set(folder, rng, kinds):
    """A VOC folder (images/, annotations/) with one square defect of each given kind; returns its boxes."""
    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    boxes = []
    for i, kind in enumerate(kinds):
        img, _, box = _square(rng, texture(rng, S, S), 250 if kind == "spot" else 5)
        write_png(folder / "images" / f"{i:03d}.png", img)
        (folder / "annotations" / f"{i:03d}.xml").write_text(_voc_xml(f"{i:03d}.png", [(kind, box)]))
        boxes.append(box)
    return boxes


def test_dataset_without_normals_trains_seg_on_pooled_sets_painted_on_labeled_canvases(data, tmp_path, run_cli):
    """NEU-DET's case: no normal images, so synthesis paints on labeled defect images. Their own defects must
    stay labeled in the training masks, several per-class sets pool into one run, and --train none works."""
    from defectgen.evaluate.data import load_labeled, load_synthetic

    rng = np.random.default_rng(7)
    lab = tmp_path / "lab"
    boxes = _voc_set(lab, rng, ["spot", "hole"] * 3)
    sets = []
    for kind in ("spot", "hole"):  # one set per class, as `synthesize --class` makes them
        folder, coco = tmp_path / f"syn-{kind}", CocoBuilder()
        for i in range(3):
            canvas = lab / "images" / f"{i:03d}.png"
            from defectgen.io.images import read_image

            img, m, _ = _square(rng, read_image(canvas), 250 if kind == "spot" else 5, size=4)
            write_png(folder / "images" / f"{i:06d}.png", img)
            coco.add_mask(coco.add_image(f"images/{i:06d}.png", S, S, source=str(canvas)), m, kind)
        coco.save(folder / "annotations.json")
        sets.append(folder)

    labeled = load_labeled(lab, S, 3, ["spot", "hole"], progress=False)
    pooled, how = load_synthetic(sets, S, 3, np.zeros((0, S, S, 3), np.uint8), False, labeled)
    masks, labels, names = pooled.masks, pooled.labels, pooled.class_names
    assert len(masks) == 6 and how["on_labeled_canvas"] == 6 and set(names) == {"spot", "hole"}
    x, y, w, h = boxes[1]  # canvas 001 holds a labeled hole: in every mask painted on it, with its class
    for k in (1, 4):
        assert masks[k][y:y + h, x:x + w].all()
        assert (labels[k][y:y + h, x:x + w] == names.index("hole") + 1).mean() > 0.5
    plain, how = load_synthetic(sets, S, 3, np.zeros((0, S, S, 3), np.uint8), False)
    assert how["on_labeled_canvas"] == 0 and plain.masks.sum() < masks.sum()

    out = tmp_path / "report"
    code, stdout, stderr = run_cli(
        "validate", "--detector", "seg", "--train", "none", "--test", data / "voc", "--synthetic", sets[0],
        "--synthetic", sets[1], "--real-labeled", lab, "--baselines", "real,real+synthetic", "--resolution", S,
        "--steps", 4, "--batch-size", 4, "--overlays", 0, "--out", out)
    assert code == 0, stdout + stderr
    report = json.loads((out / "report.json").read_text())
    assert list(report["runs"]) == ["synthetic", "real", "real+synthetic"]
    assert report["train"]["normals"] == 0 and report["config"]["train"] is None
    assert report["runs"]["synthetic"]["synthetic_images"] == 6
    assert report["runs"]["real+synthetic"]["real_images"] == 6
    assert report["synthetic_clean_sources"]["on_labeled_canvas"] == 6
    assert all("coco" in run for run in report["runs"].values())

    line = _one_line_exit_2(run_cli, tmp_path / "o1", "--detector", "exdd", "--train", "none", "--test", data / "voc",
                            "--synthetic", sets[0])
    assert "normal training images" in line
    line = _one_line_exit_2(run_cli, tmp_path / "o2", "--detector", "seg", "--train", "none", "--test", data / "voc",
                            "--synthetic", sets[0], "--baselines", "draem")
    assert "draem" in line and "--train" in line
