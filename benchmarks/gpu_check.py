"""The GPU check (issue 28): on one H100 or H200, in about 9 minutes, what the conditional DDPM at the GPU preset
gives against the CPU-config one, on magnetic-tile, measured by the same instrument.

    bash benchmarks/gpu_check.sh prepare    # here, on the CPU machine: wheels, data and backbone into .gpu/
    bash benchmarks/gpu_check.sh            # there, on the GPU machine (the run call `prepare` prints)
    python benchmarks/gpu_check.py --smoke --data ../shared/datasets/magnetic-tile --out /tmp/gpucheck   # minutes

The steps, in this order so that the GPU model's training gets what the budget leaves (`--budget-minutes`, from
the start of gpu_check.sh) and at most `--train-minutes`:

1. a timed warm-up of the conditional DDPM at the GPU preset (proof.py's CONFIGS["gpu"]: base, 256 px, batch 32,
   bf16 on CUDA), steady-state images/s from its steps, and the time of one synthesis batch with that model;
2. the CPU-config model (CONFIGS["cpu"]: tiny, 64 px, 800 steps, batch 8, fp32): the folder --cpu-model names,
   else trained here with those settings on the same data (each training run sets its own mixed precision);
3. its `--n` defects on train/good with the real labeled masks (RealMasks), its KID and the rest of
   `quality_report` against the real test defects;
4. seg, 3 seeds, at 256 px: the real-only learning curve (25/50/100% of labeled/), the set alone and real + set;
5. the GPU-preset model trained for as many steps as fit in the time left (what steps 6 and 7 will take is
   estimated from steps 1, 3 and 4), then its defects and their quality;
6. seg with its set (the set alone and real + set), the same seeds, so every run pairs with those of step 4;
7. paired verdicts and each set's worth in real defects (on the curve of step 4).

Writes gpu_check_<device>.json into --out after every step ("complete": false until the end), and a contact
sheet of both sets beside real defects (gpu_check_<device>_samples.png). `--compact DST` instead writes the
compact copy of --data that travels to the GPU machine (what `gpu_check.sh prepare` runs).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import SHARED, command_line, proof_train_config, provenance, rel  # noqa: E402
from benchmarks.proof import CONFIGS, HEADLINE, METRICS  # noqa: E402

GPU_DIR = ROOT / ".gpu"  # what `gpu_check.sh prepare` fills, ignored through .git/info/exclude
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
LR = 5e-4  # proof.py's learning rate for both DDPMs
SEG_B_SHARE = 0.6  # the second seg call (2 runs a seed) against the first (5 runs a seed, and the maps cache fill)
MIN_STEPS = 50  # the GPU model trains at least this long, whatever the budget says


# ---- the compact copy of a dataset ------------------------------------------------------------------------------

def scaled_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(H, W) with the longer side at most `max_side`, the aspect kept; an image already small enough keeps its
    size. An image and its mask share a size, so they get the same one."""
    scale = max_side / max(height, width)
    if scale >= 1:
        return height, width
    return max(1, round(height * scale)), max(1, round(width * scale))


def is_mask(relative: Path) -> bool:
    """A mask in the MVTec layout: anything under ground_truth/, and labeled/'s `*_mask` files."""
    return relative.parts[0] == "ground_truth" or relative.stem.endswith("_mask")


def shrink_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """A binary mask at height x width with every defect kept: a pixel is on where the defect covers at least half
    of it, and a region that would vanish that way (a crack a pixel wide, a speck) keeps every pixel it touches
    (nearest-neighbour shrinking emptied 2 of magnetic-tile's 388 masks). The stored values stay (0 and 255 stay
    0 and 255); a mask of more than two values (class indices) is shrunk with nearest-neighbour interpolation."""
    import cv2

    if mask.ndim != 2 or len(np.unique(mask)) > 2:
        return cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    cover = cv2.resize((mask > 0).astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
    on = cover >= 0.5
    _, regions = cv2.connectedComponents((cover > 0).astype(np.uint8), connectivity=8)
    vanished = (regions > 0) & ~np.isin(regions, np.unique(regions[on]))
    return np.where(on | vanished, mask.max(), 0).astype(mask.dtype)


def compact_dataset(src: str | Path, dst: str | Path, max_side: int = 256, quality: int = 80) -> dict:
    """A copy of the dataset at `src` in `dst` (replaced), the same layout and file names: images shrunk to
    `max_side` (area interpolation), JPEGs written at `quality`; masks shrunk to the same size as their images
    by `shrink_mask` and written as they were (PNG stays PNG); other files copied. Writes the returned summary
    to `<dst>.json`, which gpu_check records with its results."""
    import cv2

    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise SystemExit(f"{src}: no such dataset folder")
    if dst.exists():
        shutil.rmtree(dst)
    counts = {"images": 0, "masks": 0, "resized": 0, "other": 0}
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        relative = path.relative_to(src)
        target = dst / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            shutil.copy2(path, target)
            counts["other"] += 1
            continue
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise SystemExit(f"{path}: cannot be read as an image")
        h, w = image.shape[:2]
        size = scaled_size(h, w, max_side)
        mask = is_mask(relative)
        if size != (h, w):
            image = shrink_mask(image, *size) if mask else \
                cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)
            counts["resized"] += 1
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if path.suffix.lower() in (".jpg", ".jpeg") else []
        if not cv2.imwrite(str(target), image, params):
            raise SystemExit(f"{target}: cannot be written")
        counts["masks" if mask else "images"] += 1
    size = sum(p.stat().st_size for p in dst.rglob("*") if p.is_file())
    summary = {"source": rel(src), "max_side": max_side, "jpeg_quality": quality, **counts, "bytes": size}
    Path(f"{dst}.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# ---- timing -----------------------------------------------------------------------------------------------------

class StepClock:
    """train_ddpm's callback: the time of every optimizer step, and a log line every `every_s` seconds."""

    def __init__(self, name: str, steps: int, batch: int, say, every_s: float = 30.0):
        self.name, self.steps, self.batch, self.say, self.every_s = name, steps, batch, say, every_s
        self.times: list[float] = []
        self.loss: float | None = None
        self._said = time.perf_counter()

    def __call__(self, step: int, loss: float) -> None:
        now = time.perf_counter()
        self.times.append(now)
        self.loss = loss
        if now - self._said >= self.every_s:
            self._said = now
            self.say(f"{self.name}: step {step} of {self.steps}, loss {loss:.4f}")

    def summary(self) -> dict:
        """Steady-state speed: the steps after the first few (allocation, cuDNN's choices), without the pauses of
        checkpoints (steps over 5x the median)."""
        dts = np.diff(np.asarray(self.times))
        dts = dts[min(10, len(dts) // 3):]
        if not len(dts):
            return {"steps": len(self.times), "images_per_s": None, "step_s": None, "final_loss": self.loss}
        kept = dts[dts <= 5 * np.median(dts)]
        step_s = float(kept.mean())
        return {"steps": len(self.times), "images_per_s": self.batch / step_s, "step_s": step_s,
                "step_s_median": float(np.median(dts)), "final_loss": self.loss}


def train_model(folder: Path, data: Path, model: dict, steps: int, *, seed: int, gpu: bool, say,
                checkpoints: bool = True) -> dict:
    """train_ddpm as proof.py calls it (labeled/ and train/good, random crops, proof_train_config: bf16 when `gpu`),
    with the time of every step."""
    from defectgen.diffusion.train_ddpm import train_ddpm

    cfg = replace(proof_train_config(steps, model["batch"], LR, seed, "bf16" if gpu else "no"), progress=False)
    if not checkpoints:
        cfg = replace(cfg, checkpoint_every=0)
    clock = StepClock(folder.name, steps, model["batch"], say)
    t = time.perf_counter()
    train_ddpm(folder, data / "train" / "good", data / "labeled", preset=model["preset"],
               resolution=model["resolution"], crop="random", config=cfg, overwrite=True, callback=clock, log=say)
    return {"preset": model["preset"], "resolution": model["resolution"], "batch": model["batch"],
            "mixed_precision": cfg.mixed_precision, "seconds": time.perf_counter() - t, **clock.summary()}


# ---- the check --------------------------------------------------------------------------------------------------

def settings(smoke: bool) -> dict:
    """The two models' and the detector's settings: proof.py's gpu and cpu configs, or its smoke config (tiny
    models at 32 px, a detector at 64 px on 20 normals, one seed, a two-share curve)."""
    if smoke:
        s = CONFIGS["smoke"]
        model = {"preset": s["ddpm_preset"], "resolution": s["ddpm_res"], "batch": s["ddpm_batch"],
                 "sample_steps": s["sample_steps"]}
        return {"gpu_model": {**model, "max_steps": 20}, "cpu_model": {**model, "steps": 10},
                "seg": {"resolution": s["det_res"], "steps": s["ast_steps"], "batch": s["ast_batch"],
                        "max_train": s["max_train"], "seeds": 1, "curve": [0.5, 1.0]},
                "n": s["n"], "train_minutes": 0.2, "warmup_steps": 5, "probe": 2}
    g, c = CONFIGS["gpu"], CONFIGS["cpu"]
    return {"gpu_model": {"preset": g["ddpm_preset"], "resolution": g["ddpm_res"], "batch": g["ddpm_batch"],
                          "sample_steps": g["sample_steps"], "max_steps": g["ddpm_steps"]},
            "cpu_model": {"preset": c["ddpm_preset"], "resolution": c["ddpm_res"], "batch": c["ddpm_batch"],
                          "sample_steps": c["sample_steps"], "steps": c["ddpm_steps"]},
            "seg": {"resolution": g["det_res"], "steps": g["ast_steps"], "batch": g["ast_batch"],
                    "max_train": g["max_train"], "seeds": 3, "curve": [0.25, 0.5, 1.0]},
            "n": 100, "train_minutes": 5.0, "warmup_steps": 30, "probe": 8}


def device_slug() -> str:
    """'nvidia-h200' from 'NVIDIA H200'; 'cpu' without a GPU."""
    import torch

    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def run_provenance() -> dict:
    """`common.provenance()`; where the checkout has no git (the copy a GPU machine gets), the commit `prepare`
    recorded in .gpu/commit.txt."""
    try:
        record = provenance()
    except OSError:  # no git program
        from benchmarks.common import hardware

        record = {"commit": "unknown", "date": time.strftime("%Y-%m-%d"), "hardware": hardware()}
    recorded = GPU_DIR / "commit.txt"
    if record["commit"] == "unknown" and recorded.is_file():
        record["commit"] = recorded.read_text().strip()
        record["commit_from"] = rel(recorded)
    return record


class Check:
    """One run of the check: its settings, clock, work folder and the record it writes after every step."""

    def __init__(self, args: argparse.Namespace, argv: list[str]):
        self.a, self.s = args, settings(args.smoke)
        if args.n is not None:
            self.s["n"] = args.n
        if args.train_minutes is not None:
            self.s["train_minutes"] = args.train_minutes
        if args.seg_steps is not None:
            self.s["seg"]["steps"] = args.seg_steps
        import torch

        self.cuda = torch.cuda.is_available()
        self.started = time.perf_counter()
        started_at = float(os.environ.get("GPU_CHECK_STARTED") or time.time())  # gpu_check.sh's start
        self.deadline = started_at + args.budget_minutes * 60
        self.good, self.labeled = args.data / "train" / "good", args.data / "labeled"
        name = f"gpu_check_{device_slug()}{'-smoke' if args.smoke else ''}"
        args.out.mkdir(parents=True, exist_ok=True)
        self.json_path, self.figure_path = args.out / f"{name}.json", args.out / f"{name}_samples.png"
        compact = Path(f"{args.data}.json")
        self.record: dict = {
            "benchmark": "gpu_check", "smoke": args.smoke, "complete": False,
            "command": command_line("benchmarks/gpu_check.py", argv), **run_provenance(),
            "data": rel(args.data), "data_compaction": json.loads(compact.read_text()) if compact.is_file() else None,
            "backbone": rel(args.backbone), "seed": args.seed, "settings": self.s,
            "budget_s": args.budget_minutes * 60, "phases_s": {}, "train": {}, "sets": {}, "seg": None,
        }

    def say(self, message: str) -> None:
        print(f"[gpu_check {time.perf_counter() - self.started:6.0f} s] {message}", flush=True)

    def left_s(self) -> float:
        return self.deadline - time.time()

    def write(self) -> None:
        self.record["wall_time_s"] = time.perf_counter() - self.started
        self.json_path.write_text(json.dumps(self.record, indent=2, default=float) + "\n")

    def phase(self, name: str, seconds: float) -> None:
        self.record["phases_s"][name] = round(seconds, 1)
        self.write()

    # ---- models ---------------------------------------------------------------------------------------------

    def train(self, folder: Path, model: dict, steps: int, *, checkpoints: bool = True) -> dict:
        """The GPU-preset model (bf16 on CUDA, or with --bf16) in this process."""
        return train_model(folder, self.a.data, model, steps, seed=self.a.seed, gpu=self.cuda or self.a.bf16,
                           say=self.say, checkpoints=checkpoints)

    def synthesize(self, model: Path, out: Path, n: int, sample_steps: int) -> dict:
        """`n` defects with the model on train/good with the real labeled masks, as proof.py --masks real."""
        from defectgen.masks.real import RealMasks
        from defectgen.synth.options import SynthesisOptions
        from defectgen.synth.pipeline import load_generator, synthesize

        t = time.perf_counter()
        generator = load_generator(str(model), steps=sample_steps, sampler="dpm")
        result = synthesize(generator, self.good, out, n,
                            SynthesisOptions(masks=RealMasks(self.a.data, seed=self.a.seed), seed=self.a.seed,
                                             batch_size=8, overwrite=True, progress=False),
                            log=lambda *_: None)
        seconds = time.perf_counter() - t
        return {"n": n, "sampler": "dpm", "sample_steps": sample_steps, "synth_s": seconds,
                "images_per_s": n / seconds, "annotations": result.annotations}

    def quality(self, folder: Path) -> dict:
        from defectgen.evaluate.quality import quality_report

        q = quality_report(folder, self.a.data, backbone=self.a.backbone, resolution=self.s["seg"]["resolution"],
                           seed=self.a.seed)
        q.update(generated=rel(q["generated"]), real=rel(q["real"]), backbone=rel(q["backbone"]))
        return q

    def make_set(self, name: str, model: Path, sample_steps: int, work: Path) -> Path:
        t = time.perf_counter()
        folder = work / f"synth-{name}"
        self.record["sets"][name] = self.synthesize(model, folder, self.s["n"], sample_steps)
        self.say(f"{name}: {self.s['n']} defects, {self.record['sets'][name]['images_per_s']:.2f} images/s")
        q0 = time.perf_counter()
        self.record["sets"][name]["quality"] = self.quality(folder)
        self.record["sets"][name]["quality_s"] = time.perf_counter() - q0
        self.say(f"{name}: KID {self.record['sets'][name]['quality']['kid']:.4f}")
        self.phase(f"set {name}", time.perf_counter() - t)
        return folder

    # ---- seg ------------------------------------------------------------------------------------------------

    def seg(self, name: str, folder: Path, work: Path, first: bool) -> dict:
        """validate's seg with the set: the set alone and real + set, and on the first call the real-only curve;
        the records renamed after the set."""
        from defectgen.evaluate import ValidationConfig, run_validation

        d = self.s["seg"]
        res = run_validation(ValidationConfig(
            "seg", self.a.data, self.a.data, work / f"report-{name}", synthetic=folder,
            baselines=("real", "real+synthetic") if first else ("real+synthetic",), real_labeled=self.labeled,
            backbone=self.a.backbone, resolution=d["resolution"], seed=self.a.seed, steps=d["steps"],
            batch_size=d["batch"], max_train=d["max_train"], n_overlays=0, overwrite=True, progress=False,
            seeds=d["seeds"], curve=d["curve"] if first else None))
        rename = {"synthetic": name, "real+synthetic": f"real+{name}"}
        return {rename.get(run, run): record for run, record in res["runs"].items()}

    def compare(self, records: dict[str, dict]) -> dict:
        """Per run mean ± std, the paired verdicts of each real + set against real and of the two sets against
        each other, and the worth in real defects of every run with real defects on the real-only curve."""
        from defectgen.evaluate.compare import METRIC_NAMES, RunSeeds, verdicts, worth

        seeded = {name: RunSeeds.from_record(r, HEADLINE) for name, r in records.items()}
        pairs = [(f"real+{s}", "real") for s in ("gpu-model", "cpu-model")]
        pairs += [("real+gpu-model", "real+cpu-model"), ("gpu-model", "cpu-model")]
        judged = verdicts(seeded, HEADLINE, pairs=[p for p in pairs if p[0] in seeded and p[1] in seeded])
        worths = worth(seeded, HEADLINE[0])
        runs = {}
        for name, r in records.items():
            spread = r.get("spread") or {}
            runs[name] = {"real_images": r["real_images"], "synthetic_images": r.get("synthetic_images"),
                          "metrics": {m: r["metrics"].get(m) for m in METRICS},
                          "std": {m: s["std"] for m, s in spread.items()},
                          "values": {m: s["values"] for m, s in spread.items()},
                          "per_seed": r.get("per_seed"), "steps": r.get("steps"), "epochs": r.get("epochs"),
                          "stopped": r.get("stopped")}
        d = self.s["seg"]
        return {"detector": "seg", "resolution": d["resolution"], "steps": d["steps"], "batch": d["batch"],
                "max_train": d["max_train"], "seeds": [self.a.seed + k for k in range(d["seeds"])],
                "curve": d["curve"], "runs": runs, "verdicts": [p.to_json() for p in judged],
                "worth": [w.to_json() for w in worths],
                "lines": [p.line(METRIC_NAMES[p.metric]) for p in judged] + [w.line() for w in worths]}

    # ---- the plan for the GPU model's training --------------------------------------------------------------

    def plan(self, warm: dict, probe_s_per_image: float, quality_s: float, seg_a_s: float) -> dict:
        """How many steps the GPU model trains: the steps of `min(--train-minutes, the time left less what the
        rest will take)` at the warm-up's steady speed, less the run's own overhead (setup and saves, from the
        warm-up, once more for the half-way checkpoint), between MIN_STEPS and the gpu config's steps."""
        model = self.s["gpu_model"]
        step_s = warm["step_s"] or warm["seconds"] / max(warm["steps"], 1)
        overhead = 1.5 * max(0.0, warm["seconds"] - warm["steps"] * step_s)
        rest = {"synthesis": 1.3 * probe_s_per_image * self.s["n"] + 10, "quality": 1.2 * quality_s,
                "seg": SEG_B_SHARE * seg_a_s, "write": 15.0}
        window = min(self.s["train_minutes"] * 60, self.left_s() - sum(rest.values()))
        fits = int((window - overhead) / step_s)
        steps = int(min(max(fits, MIN_STEPS), model["max_steps"]))
        limited_by = "max steps" if fits >= model["max_steps"] else \
            "train minutes" if window >= self.s["train_minutes"] * 60 else "budget"
        return {"steps": steps, "window_s": window, "overhead_s": overhead, "step_s": step_s,
                "rest_s": {k: round(v, 1) for k, v in rest.items()}, "left_s": self.left_s(),
                "limited_by": limited_by}

    def run(self) -> None:
        a = self.a
        work = a.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
        work.mkdir(parents=True, exist_ok=True)
        self.say(f"data {a.data}, work {work}, {'cuda' if self.cuda else 'cpu'}, {self.left_s():.0f} s left")
        self.write()
        try:
            self._run(work)
        finally:
            if a.work is None:
                shutil.rmtree(work, ignore_errors=True)

    def _run(self, work: Path) -> None:
        from defectgen.detect.convergence import shared_maps

        a, s = self.a, self.s
        # 1. the warm-up: steady speed of the GPU preset, and one synthesis batch with the model it leaves
        t = time.perf_counter()
        warm = self.train(work / "warmup", s["gpu_model"], s["warmup_steps"], checkpoints=False)
        self.say(f"warm-up: {warm['images_per_s'] or 0:.1f} images/s at {s['gpu_model']['preset']}, "
                 f"{s['gpu_model']['resolution']} px, batch {s['gpu_model']['batch']}")
        p = time.perf_counter()
        self.synthesize(work / "warmup", work / "synth-probe", s["probe"], s["gpu_model"]["sample_steps"])
        probe_s_per_image = (time.perf_counter() - p) / s["probe"]
        warm["probe_synth_s_per_image"] = probe_s_per_image
        self.record["train"]["warmup"] = warm
        self.phase("warm-up", time.perf_counter() - t)

        # 2. the CPU-config model: carried, or trained here with the cpu config (fp32, as on the CPU)
        t = time.perf_counter()
        if a.cpu_model is not None:
            cpu_model = a.cpu_model
            meta = json.loads((cpu_model / "defectgen.json").read_text())
            self.record["train"]["cpu-model"] = {"source": rel(cpu_model), "preset": meta.get("preset"),
                                                 "resolution": meta.get("resolution"),
                                                 "training": meta.get("training"), "result": meta.get("result")}
        else:
            cpu_model = work / "cpu-model"
            trained = train_model(cpu_model, a.data, s["cpu_model"], s["cpu_model"]["steps"], seed=a.seed, gpu=False,
                                  say=self.say)
            self.record["train"]["cpu-model"] = {"source": "trained by this check with the cpu config", **trained}
        self.phase("cpu-model", time.perf_counter() - t)

        with shared_maps():  # every seg run computes each backbone map once
            # 3.-4. its set, quality, and seg with the real-only curve
            cpu_set = self.make_set("cpu-model", cpu_model, s["cpu_model"]["sample_steps"], work)
            t = time.perf_counter()
            records = self.seg("cpu-model", cpu_set, work, first=True)
            seg_a_s = time.perf_counter() - t
            self.record["seg"] = self.compare(records)
            self.phase("seg cpu-model", seg_a_s)

            # 5. the GPU model, as long as the budget allows
            plan = self.plan(warm, probe_s_per_image, self.record["sets"]["cpu-model"]["quality_s"], seg_a_s)
            self.say(f"training the GPU model for {plan['steps']} steps ({plan['window_s']:.0f} s window, limited "
                     f"by {plan['limited_by']}; {plan['left_s']:.0f} s left)")
            t = time.perf_counter()
            trained = self.train(work / "gpu-model", s["gpu_model"], plan["steps"])
            self.record["train"]["gpu-model"] = {"plan": plan, **trained,
                                                 "images_per_s_wall": plan["steps"] * s["gpu_model"]["batch"]
                                                 / trained["seconds"]}
            self.phase("gpu-model", time.perf_counter() - t)
            gpu_set = self.make_set("gpu-model", work / "gpu-model", s["gpu_model"]["sample_steps"], work)

            # 6.-7. seg with its set, the same seeds; verdicts and worth over both calls
            t = time.perf_counter()
            records.update(self.seg("gpu-model", gpu_set, work, first=False))
            self.record["seg"] = self.compare(records)
            self.phase("seg gpu-model", time.perf_counter() - t)

        from benchmarks.proof import _figure

        _figure({"gpu-model": gpu_set, "cpu-model": cpu_set}, a.data, self.figure_path)
        self.record["summary"] = self.summary()
        self.record["complete"] = True
        self.write()
        for line in self.record["seg"]["lines"] + [json.dumps(self.record["summary"])]:
            self.say(line)
        self.say(f"wrote {self.json_path} and {self.figure_path.name}; {self.left_s():.0f} s of the budget left")

    def summary(self) -> dict:
        """The headline of each set: training images/s and steps, KID, real + set's pixel AP and worth."""
        seg = self.record["seg"]
        worth = {w["run"]: w for w in seg["worth"]}
        out = {}
        for name in ("gpu-model", "cpu-model"):
            train, q = self.record["train"][name], self.record["sets"][name]["quality"]
            run = seg["runs"].get(f"real+{name}", {})
            w = worth.get(f"real+{name}")
            carried = {"images_per_s": (train.get("result") or {}).get("images_per_second"),  # a --cpu-model
                       "steps": (train.get("training") or {}).get("steps")}
            out[name] = {"train_images_per_s": train.get("images_per_s", carried["images_per_s"]),
                         "train_steps": train.get("steps", carried["steps"]),
                         "kid": q.get("kid"), "real+set pixel_ap": run.get("metrics", {}).get("pixel_ap"),
                         "real+set pixel_ap std": run.get("std", {}).get("pixel_ap"),
                         "worth": w["line"] if w else None}
        real = seg["runs"].get("real", {})
        out["real"] = {"pixel_ap": real.get("metrics", {}).get("pixel_ap"),
                       "pixel_ap std": real.get("std", {}).get("pixel_ap")}
        return out


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=SHARED / "datasets" / "magnetic-tile")
    p.add_argument("--backbone", default=str(SHARED / "weights" / "mobilenet_v2_1.0_224"))
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--work", type=Path, default=None,
                   help="keep models, sets and reports here (default: a temporary folder, removed at the end)")
    p.add_argument("--cpu-model", type=Path, default=None,
                   help="a conditional DDPM trained with the cpu config (default: train one here with it)")
    p.add_argument("--n", type=int, default=None, help="defects a set (default 100; smoke 6)")
    p.add_argument("--train-minutes", type=float, default=None,
                   help="the GPU model's training at most (default 5; smoke 0.2)")
    p.add_argument("--budget-minutes", type=float, default=9.0,
                   help="the whole check, from gpu_check.sh's start ($GPU_CHECK_STARTED) or this script's")
    p.add_argument("--seg-steps", type=int, default=None, help="seg's most steps a run (default: the gpu config's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny everything: the chain end to end on a CPU")
    p.add_argument("--bf16", action="store_true",
                   help="train the GPU-preset model in bf16 also without CUDA (the GPU run's precisions, on a CPU)")
    p.add_argument("--compact", type=Path, default=None, metavar="DST",
                   help="only write a compact copy of --data to DST (and DST.json) and exit")
    p.add_argument("--max-side", type=int, default=256, help="--compact: the images' longer side at most")
    p.add_argument("--quality", type=int, default=80, help="--compact: JPEG quality")
    return p.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse(argv)
    if args.compact is not None:
        summary = compact_dataset(args.data, args.compact, args.max_side, args.quality)
        print(json.dumps(summary))
        return
    if args.cpu_model is not None and not (args.cpu_model / "defectgen.json").is_file():
        raise SystemExit(f"--cpu-model {args.cpu_model}: not a model folder (no defectgen.json)")
    Check(args, argv).run()


if __name__ == "__main__":
    main(sys.argv[1:])
