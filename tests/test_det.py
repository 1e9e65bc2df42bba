"""det: torchvision's FCOS on the frozen backbone finds the boxes of a tiny synthetic box set (scored by pycocotools),
stops early on a plateau of its validation split, trains on cached backbone maps equal to the live ones, and
round-trips through its weights file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from defectgen.detect import get_detector, load_backbone, load_detector
from defectgen.detect.base import DetectorOptions
from defectgen.errors import DefectgenError
from defectgen.metrics import coco_map


def box_set(n: int, seed: int) -> tuple[np.ndarray, list[list[dict]]]:
    """64x64 gray images with one or two dark objects each: squares ('spot') and wide bars ('bar')."""
    rng = np.random.default_rng(seed)
    images, boxes = [], []
    for _ in range(n):
        img = rng.integers(70, 110, size=(64, 64, 1)).astype(np.uint8)
        found = []
        for _ in range(rng.integers(1, 3)):
            cls = int(rng.integers(2))
            w, h = (int(rng.integers(10, 20)),) * 2 if cls == 0 else (int(rng.integers(20, 34)), 10)
            x, y = int(rng.integers(0, 64 - w)), int(rng.integers(0, 64 - h))
            img[y:y + h, x:x + w] = 20
            found.append({"bbox": [x, y, w, h], "class": ["spot", "bar"][cls]})
        images.append(img)
        boxes.append(found)
    return np.stack(images), boxes


NO_NORMALS = np.zeros((0, 64, 64, 1), np.uint8)


@pytest.fixture(scope="module")
def trained():
    train, train_boxes = box_set(40, 0)
    det = get_detector("det").from_options(load_backbone("tiny"), DetectorOptions(epochs=6, patience=6,
                                                                                    batch_size=8, lr=3e-3))
    return det.fit(NO_NORMALS, train, None, boxes=train_boxes)


def test_det_finds_the_boxes_and_cocoeval_scores_it_above_one_half(trained):
    test, test_boxes = box_set(16, 1)
    maps, scores, found = trained.predict_with_boxes(test)
    result = coco_map(test_boxes, found, ["bar", "spot"])
    assert result["map50"] > 0.5, result
    assert maps.shape == (16, 64, 64) and scores.shape == (16,)
    # the anomaly map is the box scores painted where the boxes are
    top = max(found[0], key=lambda b: b["score"])
    x, y, w, h = (int(round(v)) for v in top["bbox"])
    assert maps[0, y + h // 2, x + w // 2] == pytest.approx(top["score"]) and scores[0] == pytest.approx(top["score"])
    report = trained.summary()
    assert report["validation_images"] == 6 and report["train_images"] == 34 and report["epochs"] == 6


def test_weights_round_trip(trained, tmp_path):
    test, _ = box_set(4, 2)
    trained.save(tmp_path / "det.safetensors")
    again = load_detector(tmp_path / "det.safetensors", backbone=trained.backbone)
    _, _, before = trained.predict_with_boxes(test)
    _, _, after = again.predict_with_boxes(test)
    assert [[b["bbox"] for b in bs] for bs in before] == [[b["bbox"] for b in bs] for bs in after]
    assert again.class_names == ["bar", "spot"] and again.size == (64, 64)


def test_early_stopping_stops_on_a_plateau_of_the_validation_split():
    train, boxes = box_set(20, 3)
    det = get_detector("det").from_options(load_backbone("tiny"), DetectorOptions(epochs=30, patience=3, lr=0.0))
    det.fit(NO_NORMALS, train, None, boxes=boxes)  # lr 0: nothing changes, so validation mAP cannot improve
    report = det.summary()
    # the first epoch sets the best, three more without a gain end it
    assert report["epochs"] == 4 and "no validation gain" in report["stopped"]
    # the validation split is carved from the training defects: nothing else is seen
    assert report["validation_images"] + report["train_images"] == 20


def test_cached_backbone_maps_give_the_live_head_outputs(trained):
    from defectgen.detect.convergence import MapCache
    from defectgen.detect.det import _as_rgb, _padded

    images, _ = box_set(3, 4)
    cache = MapCache(trained.pyramid.body_maps, list(images), trained.device, prepare=_padded)
    keys = [(0, 0), (1, 1), (2, 3)]  # as they are, flipped left-right, flipped both ways
    cached = cache.maps(keys)
    assert len(cache.store) == 3
    x = torch.stack([_as_rgb(cache.image(i, f)) for i, f in keys])
    with torch.no_grad():
        live = trained.pyramid(x)
        trained.pyramid.cached = cached
        from_cache = trained.pyramid(x)
        trained.pyramid.cached = None
    for key in live:  # half-precision cache: equal up to float16 rounding
        torch.testing.assert_close(from_cache[key], live[key], rtol=1e-2, atol=1e-2)


def test_det_without_boxes_is_one_clear_error():
    det = get_detector("det").from_options(load_backbone("tiny"), DetectorOptions(epochs=1))
    images, _ = box_set(3, 5)
    with pytest.raises(DefectgenError, match="no boxes"):
        det.fit(NO_NORMALS, images, np.zeros((3, 64, 64), bool))
    with pytest.raises(DefectgenError, match="no defect images"):
        det.fit(NO_NORMALS, images[:0], None)


def test_boxes_come_from_label_maps_when_the_layout_has_none():
    from defectgen.detect.det import boxes_from_labels

    labels = np.zeros((32, 32), np.int64)
    labels[2:6, 3:9] = 1
    labels[20:30, 20:22] = 2
    assert sorted(boxes_from_labels(labels, 2)) == [(3.0, 2.0, 9.0, 6.0, 0), (20.0, 20.0, 22.0, 30.0, 1)]


# ---- validate --detector det ------------------------------------------------------------------------------------

def _voc(root, images, boxes) -> None:
    from conftest import write_png

    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for i, (img, bs) in enumerate(zip(images, boxes, strict=True)):
        write_png(root / "images" / f"{i:03d}.png", img[:, :, 0])
        objects = "".join(f"<object><name>{b['class']}</name><bndbox><xmin>{x + 1}</xmin><ymin>{y + 1}</ymin>"
                          f"<xmax>{x + w}</xmax><ymax>{y + h}</ymax></bndbox></object>"
                          for b in bs for x, y, w, h in [b["bbox"]])
        (root / "annotations" / f"{i:03d}.xml").write_text(
            f"<annotation><filename>{i:03d}.png</filename><size><width>64</width><height>64</height>"
            f"<depth>1</depth></size>{objects}</annotation>")


def test_validate_det_scores_boxes_with_cocoeval_and_says_how_training_stopped(tmp_path, run_cli):
    _voc(tmp_path / "labeled", *box_set(24, 6))
    _voc(tmp_path / "test", *box_set(8, 7))
    code, _, err = run_cli("validate", "--detector", "det", "--train", "none", "--test", tmp_path / "test",
                           "--real-labeled", tmp_path / "labeled", "--synthetic", "none", "--baselines", "real",
                           "--resolution", "64", "--epochs", "6", "--patience", "2", "--overlays", "0",
                           "--out", tmp_path / "r")
    assert code == 0, err
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    run = report["runs"]["real"]
    assert set(run["coco"]["per_class"]) == {"bar", "spot"} and 0.0 <= run["coco"]["map50"] <= 1.0
    assert 1 <= run["epochs"] <= 6 and run["stopped"] and run["validation_images"] == 4
    assert report["config"]["epochs"] == 6 and report["config"]["patience"] == 2
    md = (tmp_path / "r" / "report.md").read_text()
    assert f"- `real`: {run['epochs']} epochs on 20 images" in md and "COCO mAP@0.5" in md


def test_validate_det_refuses_a_labeled_set_without_boxes_and_a_test_set_without_them(tmp_path, run_cli):
    images, boxes = box_set(8, 8)
    _voc(tmp_path / "test", images, boxes)
    _voc(tmp_path / "nobox", images, [[] for _ in boxes])  # VOC files without objects: normal images
    code, _, err = run_cli("validate", "--detector", "det", "--train", "none", "--test", tmp_path / "test",
                           "--real-labeled", tmp_path / "nobox", "--synthetic", "none", "--baselines", "real",
                           "--resolution", "64", "--out", tmp_path / "r1")
    assert code == 2 and "no labeled defects" in err and not (tmp_path / "r1").exists(), err
    # a test set whose defects have empty masks gives no boxes to score
    from conftest import texture, write_png

    rng = np.random.default_rng(0)
    mv = tmp_path / "mv"
    for i in range(2):
        write_png(mv / "test" / "good" / f"{i}.png", texture(rng))
        write_png(mv / "test" / "scratch" / f"{i}.png", texture(rng))
        write_png(mv / "ground_truth" / "scratch" / f"{i}_mask.png", np.zeros((32, 32), np.uint8))
    _voc(tmp_path / "labeled", *box_set(8, 9))
    code, _, err = run_cli("validate", "--detector", "det", "--train", "none", "--test", mv, "--real-labeled",
                           tmp_path / "labeled", "--synthetic", "none", "--baselines", "real", "--resolution", "32",
                           "--out", tmp_path / "r2")
    assert code == 2 and not (tmp_path / "r2").exists(), err
    assert len([line for line in err.strip().splitlines() if line.startswith("error:")]) == 1, err
    code, _, err = run_cli("validate", "--detector", "det", "--train", "none", "--test", tmp_path / "test",
                           "--real-labeled", tmp_path / "labeled", "--synthetic", "none", "--baselines", "real",
                           "--box-head", "yolo", "--out", tmp_path / "r3")
    assert code == 2 and "unknown box head 'yolo'" in err and not (tmp_path / "r3").exists(), err


def test_validate_hands_det_the_layouts_own_boxes_unmerged(tmp_path):
    """Two touching boxes of one class stay two training boxes (a label map would merge them into one)."""
    from defectgen.evaluate.data import load_labeled

    img = np.full((64, 64, 1), 90, np.uint8)
    img[10:20, 10:20] = img[10:20, 20:30] = 20
    _voc(tmp_path / "lab", [img], [[{"bbox": [10, 10, 10, 10], "class": "spot"},
                                    {"bbox": [20, 10, 10, 10], "class": "spot"}]])
    labeled = load_labeled(tmp_path / "lab", (64, 64), 1, ["spot"], False)
    assert [b["bbox"] for b in labeled.boxes[0]] == [[10.0, 10.0, 10.0, 10.0], [20.0, 10.0, 10.0, 10.0]]
    det = get_detector("det").from_options(load_backbone("tiny"), DetectorOptions())
    names, per_image = det._targets(labeled.images, labeled.masks, labeled.labels, labeled.class_names,
                                    labeled.boxes)
    assert names == ["spot"] and per_image[0].tolist() == [[10, 10, 20, 20, 0], [20, 10, 30, 20, 0]]
    merged = det._targets(labeled.images, labeled.masks, labeled.labels, ["spot"], None)[1]
    assert merged[0].tolist() == [[10, 10, 30, 20, 0]]  # what the label map alone gives


def test_shared_map_store_computes_each_image_once_across_runs():
    """Inside `shared_maps()` a second run on the same images (a learning curve's next share or seed) finds every
    backbone map already computed, and trains to the same weights as a run without the store."""
    from defectgen.detect.convergence import shared_maps

    train, boxes = box_set(20, 6)
    opts = DetectorOptions(epochs=2, patience=5, batch_size=8, lr=3e-3)

    def fit():
        return get_detector("det").from_options(load_backbone("tiny"), opts).fit(NO_NORMALS, train, None,
                                                                                   boxes=boxes)
    alone = fit()
    with shared_maps() as store:
        first = fit()
        n = len(store)
        second = fit()
        assert n == 17 * 4 + 3 and len(store) == n  # training defects in four flips, validation ones as they are
    for a, b in ((alone, first), (first, second)):
        for k, v in a._trained_state().items():
            torch.testing.assert_close(b._trained_state()[k], v)


@pytest.mark.parametrize("head", ["retinanet", "faster-rcnn"])
def test_other_box_heads_train_on_the_same_pyramid_and_round_trip(head, tmp_path):
    train, boxes = box_set(12, 7)
    det = get_detector("det").from_options(load_backbone("tiny"), DetectorOptions(epochs=1, batch_size=6,
                                                                                    lr=3e-3, box_head=head))
    det.fit(NO_NORMALS, train, None, boxes=boxes)
    assert det.summary()["epochs"] == 1 and np.isfinite(det.summary()["history"][-1]["loss"])
    det.save(tmp_path / "det.safetensors")
    again = load_detector(tmp_path / "det.safetensors", backbone=det.backbone)
    assert again.head == head
    _, _, before = det.predict_with_boxes(train[:3])
    _, _, after = again.predict_with_boxes(train[:3])
    assert [[b["bbox"] for b in bs] for bs in before] == [[b["bbox"] for b in bs] for bs in after]


def test_unknown_box_head_is_one_clear_error():
    with pytest.raises(DefectgenError, match="unknown box head 'yolo'"):
        get_detector("det").from_options(load_backbone("tiny"), DetectorOptions(box_head="yolo"))


def test_early_stopping_counts_patience_from_gains_above_min_gain_but_keeps_the_best_weights():
    from defectgen.detect.convergence import EarlyStopping

    stop = EarlyStopping(patience=2, min_gain=0.005)
    weights = iter(range(10))
    scores = [0.5, 0.502, 0.504, 0.503]  # creeping gains below 0.005: noise on a small split
    stopped = []
    for epoch, score in enumerate(scores, 1):
        stopped.append(stop.update(epoch, 1.0, score, lambda: {"w": torch.tensor(next(weights))}))
        if stopped[-1]:
            break
    assert stopped == [False, False, True]
    assert stop.best == 0.504 and stop.best_epoch == 3 and int(stop._state["w"]) == 2
    assert "above 0.005 for 2 epochs" in stop.stopped


def test_fcos_box_regression_starts_alive_everywhere():
    """torchvision's FCOS regresses ReLU(conv): det starts every cell's box outside ReLU's dead zone (a zero bias
    left half of them at zero, where no gradient passes, and training could die there)."""
    det = get_detector("det").from_options(load_backbone("tiny"), DetectorOptions(seed=3))
    head = det.model.head.regression_head
    features = [torch.randn(2, det.width, s, s) for s in (8, 4, 2)]
    regression, _ = head(features)
    assert regression.shape == (2, 8 * 8 + 4 * 4 + 2 * 2, 4)
    assert bool((regression > 0).all()), float((regression <= 0).float().mean())
