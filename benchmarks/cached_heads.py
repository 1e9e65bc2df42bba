"""What caching the frozen backbone's maps buys the supervised heads: seconds per training step of seg and det
with the backbone run every step (before) and with the maps read from the cache (after), and the one-time cost of
filling the cache per image. Real images (magnetic-tile normals at 256 px for seg, NEU-DET at 224 px for det),
the ImageNet MobileNetV2 backbone. Writes benchmarks/results/cached_heads_<tag>.json with the hardware and commit.

    python benchmarks/cached_heads.py --tag cpu
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import ROOT, SHARED, command_line, provenance  # noqa: E402


def images(folder: Path, n: int, size: int) -> np.ndarray:
    import cv2

    from defectgen.io.images import image_files, read_image

    out = []
    for p in image_files(folder)[:n]:
        img = read_image(p)
        out.append(cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA).reshape(size, size, -1))
    return np.stack(out)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default=str(SHARED / "weights" / "mobilenet_v2_1.0_224"))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--tag", default="cpu")
    a = p.parse_args(argv)

    from defectgen.detect import get_detector, load_backbone
    from defectgen.detect.base import DetectorOptions
    from defectgen.detect.convergence import MapCache
    from defectgen.detect.det import _as_rgb, _padded
    from defectgen.detect.features import to_tensor

    started_at = provenance()  # the commit when the run started
    bb = load_backbone(a.backbone)
    b = a.batch_size
    results = {}

    # seg: focal + dice on a batch of 256 px magnetic-tile images with a made-up square defect each
    x_np = images(SHARED / "datasets" / "magnetic-tile" / "train" / "good", b, 256)
    seg = get_detector("seg").from_options(bb, DetectorOptions())
    labels = torch.zeros(b, 256, 256, dtype=torch.long)
    labels[:, 100:140, 100:140] = 1
    params = [q for n, q in seg.named_parameters() if not n.startswith("backbone.")]
    opt = torch.optim.AdamW(params, lr=1e-3)
    x = to_tensor(x_np, seg.device)
    cache = MapCache(lambda t: bb(t, seg.strides), list(x_np), seg.device)
    fill = timed(lambda: (cache.store.clear(), cache.fill([(i, 0) for i in range(b)], b)), 3) / b
    keys = [(i, 0) for i in range(b)]

    def seg_step(cached: bool) -> None:
        logits = seg.decode(cache.maps(keys), (256, 256)) if cached else seg(x)
        loss = seg.losses_of(logits, labels)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    results["seg"] = {"images": "magnetic-tile train/good, 256x256", "batch": b,
                      "uncached_s_per_step": timed(lambda: seg_step(False), a.repeats),
                      "cached_s_per_step": timed(lambda: seg_step(True), a.repeats),
                      "cache_fill_s_per_image": fill}

    # det: FCOS losses on a batch of 224 px NEU-DET images with their boxes
    from benchmarks.det_neu import load

    imgs, boxes = load(SHARED / "datasets" / "neu-det", "train", 224, b / 1440, 0)
    imgs, boxes = imgs[:b], boxes[:b]
    det = get_detector("det").from_options(bb, DetectorOptions())
    classes = sorted({bx["class"] for bs in boxes for bx in bs})
    names, targets = det._targets(imgs, None, None, classes, boxes)
    det._build(names, (224, 224))
    det.model.train()
    dparams = [q for q in det.model.parameters() if q.requires_grad]
    dopt = torch.optim.AdamW(dparams, lr=1e-3)
    dcache = MapCache(det.pyramid.body_maps, list(imgs), det.device, prepare=_padded)
    dfill = timed(lambda: (dcache.store.clear(), dcache.fill([(i, 0) for i in range(len(imgs))], b)), 3) / len(imgs)
    batch = [_as_rgb(dcache.image(i, 0)) for i in range(len(imgs))]
    tg = [{"boxes": torch.from_numpy(t[:, :4]), "labels": torch.from_numpy(t[:, 4]).long() + 1} for t in targets]
    dkeys = [(i, 0) for i in range(len(imgs))]

    def det_step(cached: bool) -> None:
        det.pyramid.cached = dcache.maps(dkeys) if cached else None
        loss = sum(det.model(batch, tg).values())
        dopt.zero_grad()
        loss.backward()
        dopt.step()
        det.pyramid.cached = None

    results["det"] = {"images": "NEU-DET train, 224x224", "batch": len(imgs),
                      "uncached_s_per_step": timed(lambda: det_step(False), a.repeats),
                      "cached_s_per_step": timed(lambda: det_step(True), a.repeats),
                      "cache_fill_s_per_image": dfill}
    for r in results.values():
        r["speedup"] = r["uncached_s_per_step"] / r["cached_s_per_step"]
    out = {"benchmark": "cached_heads", "command": command_line("benchmarks/cached_heads.py", argv),
           **started_at, "torch_threads": torch.get_num_threads(), "results": results}
    (ROOT / "benchmarks" / "results" / f"cached_heads_{a.tag}.json").write_text(json.dumps(out, indent=2) + "\n")
    for k, r in results.items():
        print(f"{k}: {r['uncached_s_per_step']:.3f} s/step uncached, {r['cached_s_per_step']:.3f} s/step cached "
              f"({r['speedup']:.1f}x); cache fill {r['cache_fill_s_per_image']:.3f} s/image")


if __name__ == "__main__":
    main(sys.argv[1:])
