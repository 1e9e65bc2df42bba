"""What every benchmark records about the machine it ran on."""

from __future__ import annotations

from pathlib import Path

import numpy as np

PACKAGES = ("diffusers", "accelerate", "transformers", "torchvision", "numpy", "opencv-python-headless", "pillow",
            "pycocotools", "safetensors")


def hardware(device=None) -> dict:
    """The library's hardware record plus the versions of the packages a result can depend on (a det result on NEU-DET
    did not reproduce across machines and fresh venvs: every result says what it ran with)."""
    from importlib.metadata import PackageNotFoundError, version

    from defectgen.runtime import hardware as library_hardware

    def known(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {**library_hardware(device), **{name: known(name) for name in PACKAGES}}


def git_commit() -> str:
    """The commit the code that runs comes from (HEAD), with "+changes" when defectgen/ or the benchmark scripts differ
    from it;
    "unknown" outside a git checkout (an unpacked release)."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "HEAD")
    if not head:
        return "unknown"
    changed = git("status", "--porcelain", "--", "defectgen", "benchmarks", ":!benchmarks/results")
    return head + ("+changes" if changed else "")


def provenance(device=None) -> dict:
    """What every results JSON records about its run: the commit, the date and the hardware (see `hardware`)."""
    import time

    return {"commit": git_commit(), "date": time.strftime("%Y-%m-%d"), "hardware": hardware(device)}


# ---- shared by the proof scripts (proof.py on magnetic-tile, proof_neu.py on NEU-DET) ---------------------------

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def rel(path) -> str:
    """Results name paths relative to the repository, never the machine's layout: inside the repository or beside
    it in ../shared as a relative path, in the temporary folder as $TMPDIR/..., elsewhere by its name alone."""
    import tempfile

    if not Path(str(path)).exists():
        return str(path)
    full = Path(path).resolve()
    for base, shown in ((ROOT, None), (SHARED.resolve(), "../shared"), (Path(tempfile.gettempdir()).resolve(),
                                                                         "$TMPDIR")):
        if full.is_relative_to(base):
            inner = full.relative_to(base).as_posix()
            return inner if shown is None else f"{shown}/{inner}"
    return f"<elsewhere>/{full.name}"


def command_line(script: str, argv: list[str]) -> str:
    """The command a result came from, with the paths in it written as `rel` writes them (also a NAME=PATH's)."""
    def shown(arg: str) -> str:
        if "/" in arg and Path(arg).exists():
            return rel(arg)
        name, _, path = arg.partition("=")
        return f"{name}={rel(path)}" if "/" in path and Path(path).exists() else arg
    return " ".join(["python", script, *map(shown, argv)])


def proof_parser(doc: str, configs: dict, dataset: str, generators: str):
    """The options every proof script takes; each script adds its own."""
    import argparse

    from defectgen.diffusion.models import PRESETS, TARGETS

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(configs), default="cpu")
    parser.add_argument("--data", type=Path, default=SHARED / "datasets" / dataset)
    parser.add_argument("--backbone", default=str(SHARED / "weights" / "mobilenet_v2_1.0_224"))
    parser.add_argument("--tokenizer", default=str(SHARED / "weights" / "clip-tokenizer"))
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--generators", default=generators)
    parser.add_argument("--reuse", action="store_true",
                        help="keep models already trained in --work (to vary synthesis or detection only)")
    parser.add_argument("--tag", default="", help="suffix of the result files")
    parser.add_argument("--ddpm-steps", type=int, default=None,
                        help="training steps of the conditional (and unconditional) DDPM (default: the config's)")
    parser.add_argument("--ddpm-context", type=float, default=1.0,
                        help="the DDPMs' training and synthesis windows, in model sides (train-ddpm --context)")
    parser.add_argument("--ddpm-preset", choices=sorted(PRESETS), default=None,
                        help="the DDPMs' UNet size (default: the config's)")
    parser.add_argument("--variant", default=None,
                        help="a name recorded beside the DDPMs' timings, so compute_curve.py draws and pairs their "
                        "points as a line of their own (a rerun on another machine, say)")
    parser.add_argument("--ddpm-target", choices=TARGETS, default="image",
                        help="what the conditional DDPM diffuses (train-ddpm --target)")
    parser.add_argument("--ldm-steps", type=int, default=None,
                        help="training steps of the text-guided LDM's denoiser (default: the config's)")
    parser.add_argument("--ldm-vae-steps", type=int, default=None,
                        help="training steps of the LDM's VAE, its first stage (default: the config's)")
    parser.add_argument("--mixed-precision", choices=("no", "bf16"), default=None,
                        help="the generators' training precision (default: bf16 with --config gpu, else fp32)")
    parser.add_argument("--guidance", type=float, default=None,
                        help="the conditional DDPM's classifier-free guidance scale (default: the generator's, 3)")
    parser.add_argument("--sets-only", action="store_true",
                        help="run only the detector runs that hold each set (the set alone, real+set): no "
                        "baselines and no curve; `benchmarks/compute_curve.py` pairs them with the runs of a full "
                        "proof at the same seeds and settings")
    return parser


def proof_precision(args) -> str:
    """The generators' training precision: --mixed-precision, else bf16 on the GPU config and fp32 on the CPU (so
    earlier CPU results stay comparable)."""
    return args.mixed_precision or ("bf16" if args.config == "gpu" else "no")


def proof_train_config(steps: int, batch: int, lr: float, seed: int, precision: str):
    """Short-run training settings: warm-up a tenth of the run (at most 200 steps), a checkpoint half-way."""
    from defectgen.diffusion.training import TrainConfig

    return TrainConfig(steps=steps, batch_size=batch, lr=lr, warmup_steps=min(200, steps // 10),
                       checkpoint_every=max(steps // 2, 1), seed=seed, mixed_precision=precision)


def proof_settings(configs: dict, args) -> dict:
    """The config's settings with the command line's overrides (--ddpm-steps, --ddpm-preset, --ldm-steps,
    --ldm-vae-steps)."""
    cfg = dict(configs[args.config])
    for key in ("ddpm_steps", "ddpm_preset", "ldm_steps", "ldm_vae_steps"):
        if getattr(args, key, None):
            cfg[key] = getattr(args, key)
    return cfg


def reusable_model(folder: Path, reuse: bool) -> dict | None:
    """The timing record of a model kept from an earlier run in `folder` (its training time and steps as the
    model's defectgen.json recorded them), or None when it must be trained."""
    from defectgen.diffusion.folder import has_metadata, read_metadata

    if not (reuse and has_metadata(folder)):
        return None
    meta = read_metadata(folder)
    training, weights = meta.get("training", {}), meta.get("weights") or {}
    record = {"train_s": meta.get("result", {}).get("seconds"), "reused": rel(folder),
              "steps": weights.get("checkpoint", training.get("steps")),
              "mixed_precision": training.get("mixed_precision")}
    if weights.get("ema") is False:  # a run's trained weights, not its EMA (ddpm.model_at_checkpoint)
        record["weights"] = "raw"
    if meta.get("context", 1.0) != 1.0:
        record["context"] = meta["context"]
    if (meta.get("conditioning") or {}).get("target", "image") != "image":
        record["target"] = meta["conditioning"]["target"]
    return record


def ddpm_variant(args, conditional: bool = True) -> dict:
    """The DDPM training options of the command line that differ from the config's, as a proof's timings record
    them beside each DDPM (`compute_curve.py` draws each such variant as a line of its own). `target` belongs to
    the conditional model only."""
    record = {"context": args.ddpm_context} if args.ddpm_context != 1.0 else {}
    if args.ddpm_preset:  # a larger (or smaller) UNet than the config's
        record["preset"] = args.ddpm_preset
    if args.variant:
        record["variant"] = args.variant
    if conditional and args.ddpm_target != "image":
        record["target"] = args.ddpm_target
    return record


def seeded_json(runs: dict) -> dict:
    """The per-seed values behind a proof's verdicts ({detector: {run: RunSeeds}}) as JSON, so that a later run
    with the same seeds can be paired with these runs (`benchmarks/compute_curve.py`)."""
    return {d: {name: {"values": r.values, "real_images": r.real_images} for name, r in by_run.items()}
            for d, by_run in runs.items()}


def stack_rows(rows: list[np.ndarray]) -> np.ndarray:
    """Contact-sheet rows of different widths, one under the other, padded white on the right."""
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows])


def fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def write_results(name: str, out: dict, markdown: str, figure: Path | None) -> None:
    """benchmarks/results/<name>.json and .md, and a copy of the figure (if any), then the Markdown on stdout."""
    import json
    import shutil

    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(out, indent=2, default=float) + "\n")
    (results / f"{name}.md").write_text(markdown)
    if figure is not None:
        shutil.copy(figure, results / figure.name)
    print(markdown)
