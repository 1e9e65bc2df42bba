"""One run of the validation experiment: a detector trained on one training set and scored on the real test set
(`train_and_score`), and what the report keeps of it (`RunResult`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from defectgen.detect.base import Detector, DetectorOptions, get_detector
from defectgen.detect.tiling import Tiled, rescale_boxes, restore_maps
from defectgen.evaluate.data import Images, TestSet, TrainingSet
from defectgen.evaluate.report import fmt_metric, json_safe
from defectgen.metrics import coco_map, evaluate
from defectgen.progress import bar


@dataclass
class RunResult:
    """A run's scores: the metrics on the whole test set and per defect class (each class's defects against all
    normals), COCO box mAP (None where not measured), seconds to train and to score, how many synthetic and real
    defect images it trained on, the detector's own training summary (`Detector.summary()`) and, for a
    `+pseudo` run, the pseudo-label counts."""

    metrics: dict[str, float]
    per_class: dict[str, dict[str, float]]
    coco: dict[str, Any] | None
    train_s: float
    test_s: float
    synthetic_images: int
    real_images: int
    training: dict[str, Any]
    pseudo: dict[str, int] | None = None

    def to_json(self) -> dict[str, Any]:
        """The run's record in report.json: the fields above with the training summary's keys among them, and
        undefined metrics as null."""
        record: dict[str, Any] = {"metrics": self.metrics, "per_class": self.per_class, "train_s": self.train_s,
                                  "test_s": self.test_s, "synthetic_images": self.synthetic_images,
                                  "real_images": self.real_images}
        if self.coco is not None:
            record["coco"] = self.coco
        record.update(self.training)
        if self.pseudo is not None:
            record["pseudo"] = self.pseudo
        return json_safe(record)


def train_and_score(name: str, training: TrainingSet, detector: str, backbone, options: DetectorOptions,
                    normals: Images, test_set: TestSet, *, boxes_too: bool, progress: bool, tile: int | None = None
                    ) -> tuple[Detector, RunResult, list[np.ndarray], np.ndarray]:
    """Train `detector` (on `backbone`, with `options`) on the normals and `training` (on tiles of `tile` at
    native scale if given) and score it on the test set (COCO box mAP too with `boxes_too`): the model, the
    run's result, the anomaly maps at each test image's own size and the image scores."""
    det_cls = get_detector(detector)
    desc = f"[{name}] {detector}"
    t0 = time.perf_counter()
    model = det_cls.from_options(backbone, options)
    if tile is not None:
        model = Tiled(model, tile, options.seed)
    if det_cls.needs_cleans:
        training = training.with_cleans()
    boxes = {"boxes": training.boxes} if det_cls.box_detector and training.boxes is not None else {}
    model.fit(normals, training.images, training.masks, progress=progress, cleans=training.cleans,
              labels=training.labels, class_names=training.class_names, desc=desc, **boxes)
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    maps, scores, found = _predict(model, test_set.images, boxes_too, progress, f"{desc}: scoring")
    coco = None
    if boxes_too:
        coco = coco_map(test_set.boxes, rescale_boxes(found, test_set.size, test_set.sizes), test_set.box_classes)
    maps = restore_maps(maps, test_set.sizes)  # pixel metrics on the original masks, not squashed ones
    metrics = evaluate(test_set.labels, scores, test_set.masks, maps)
    result = RunResult(metrics, _per_class(test_set, maps, scores), coco, train_s, time.perf_counter() - t1,
                       int(training.synthetic_images), int(training.real_images), model.summary())
    if progress:
        print(f"[{name}] " + ", ".join(f"{k} {fmt_metric(v)}" for k, v in metrics.items())
              + (f", map50 {fmt_metric(coco['map50'])}" if coco is not None else ""), flush=True)
    return model, result, maps, scores


def _predict(model, images, boxes_too: bool, progress: bool, desc: str, chunk: int = 64
             ) -> tuple[list[np.ndarray], np.ndarray, list[list[dict]]]:
    """The model's maps, scores (and boxes) of the test images, `chunk` images at a time under a progress bar
    (a detector scores each image on its own, so chunks change nothing)."""
    maps: list[np.ndarray] = []
    scores, found = [], []
    with bar(total=len(images), desc=desc, unit="img", disable=not progress) as shown:
        for start in range(0, len(images), chunk):
            part = images[start: start + chunk]
            if boxes_too:
                m, sc, f = model.predict_with_boxes(part)
                found += f
            else:
                m, sc = model.predict(part)
            maps += list(m)
            scores.append(np.asarray(sc))
            shown.update(len(part))
    return maps, np.concatenate(scores), found


def _per_class(test: TestSet, maps: Sequence[np.ndarray], scores: np.ndarray) -> dict[str, dict[str, float]]:
    """The metrics of each defect class: its images against every normal."""
    classes = sorted({c for c, lab in zip(test.classes, test.labels, strict=True) if lab})
    good = ~test.labels
    result = {}
    for c in classes:
        keep = np.flatnonzero(good | np.array([x == c for x in test.classes]))
        result[c] = evaluate(test.labels[keep], scores[keep], [test.masks[i] for i in keep],
                             [maps[i] for i in keep])
    return result
