"""det on NEU-DET, real labels only: box mAP (pycocotools' COCOeval) on the test split after training on a share of
the train split, by epochs with early stopping on a validation split of those labels. Writes
benchmarks/results/det_neu_<tag>.json with the hardware, the git commit, the training report and the time.

    python benchmarks/det_neu.py --share 1.0 --epochs 50 --patience 5 --tag cpu-full
    python benchmarks/det_neu.py --share 1.0 --box-head fcos,retinanet,faster-rcnn --tag cpu-heads
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import ROOT, SHARED, command_line, provenance  # noqa: E402


def load(root: Path, split: str, size: int, share: float, seed: int):
    from defectgen.io import open_dataset

    ds = open_dataset(root).select(split=split)
    order = np.random.default_rng(seed).permutation(len(ds))[: max(1, int(round(share * len(ds))))]
    images, boxes = [], []
    for i in sorted(order.tolist()):
        s = ds[i]
        sy, sx = size / s.height, size / s.width
        img = cv2.resize(s.image, (size, size), interpolation=cv2.INTER_AREA).reshape(size, size, -1)
        images.append(img)
        boxes.append([{"bbox": [b.x0 * sx, b.y0 * sy, (b.x1 - b.x0) * sx, (b.y1 - b.y0) * sy],
                       "class": b.label} for b in s.boxes])
    return np.stack(images), boxes


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default=str(SHARED / "datasets" / "neu-det"))
    p.add_argument("--backbone", default=str(SHARED / "weights" / "mobilenet_v2_1.0_224"))
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--share", type=float, default=1.0)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--box-head", default="fcos", help="fcos, retinanet or faster-rcnn, or several comma-separated: "
                   "each is trained in turn on the same backbone maps (computed once) and gets its own JSON")
    p.add_argument("--tag", default="cpu")
    a = p.parse_args(argv)

    from defectgen.detect import get_detector, load_backbone
    from defectgen.detect.base import DetectorOptions
    from defectgen.detect.convergence import shared_maps
    from defectgen.metrics import coco_map

    started_at = provenance()  # the commit when the run started
    train, train_boxes = load(Path(a.data), "train", a.size, a.share, a.seed)
    test, test_boxes = load(Path(a.data), "test", a.size, 1.0, 0)
    classes = sorted({b["class"] for bs in train_boxes + test_boxes for b in bs})
    heads = a.box_head.split(",")
    with shared_maps():  # several heads: the backbone's maps of every image computed once, for the first
        for head in heads:
            started = time.perf_counter()
            det = get_detector("det").from_options(load_backbone(a.backbone), DetectorOptions(
                seed=a.seed, epochs=a.epochs, patience=a.patience, batch_size=a.batch_size, lr=a.lr, box_head=head))
            det.fit(np.zeros((0, *train.shape[1:]), np.uint8), train, None, boxes=train_boxes, class_names=classes,
                    progress=True)
            fit_s = time.perf_counter() - started
            _, _, found = det.predict_with_boxes(test)
            result = coco_map(test_boxes, found, classes)
            tag = a.tag if len(heads) == 1 else f"{a.tag}-{head}"
            out = {"benchmark": "det_neu", "command": command_line("benchmarks/det_neu.py", argv),
                   **started_at, "args": vars(a) | {"data": "neu-det", "backbone": Path(a.backbone).name,
                                                              "box_head": head},
                   "backbone_maps": "computed in this run" if head == heads[0] else f"cached by the {heads[0]} run",
                   "train_images": len(train), "test_images": len(test), "coco": result, "training": det.summary(),
                   "fit_seconds": round(fit_s, 1), "total_seconds": round(time.perf_counter() - started, 1)}
            path = ROOT / "benchmarks" / "results" / f"det_neu_{tag}.json"
            path.write_text(json.dumps(out, indent=2) + "\n")
            print(f"{head}: mAP@0.5 {result['map50']:.3f}, mAP@[.5:.95] {result['map']:.3f}; "
                  f"{det.summary()['epochs']} epochs ({det.summary()['stopped']}); {out['total_seconds']} s -> {path}",
                  flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
