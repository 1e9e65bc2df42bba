"""`train_ddpm`: train the unconditional DDPM (normals only) or the conditional one (`labeled` given) and save it.

Training is kept apart from the models as diffusers keeps it in its example scripts: this module only composes the
parts, each kind's network, examples and loss (ddpm.py, through the `DdpmModel` interface), the samples read from
disk (data.py) and the one accelerate loop (training.py), and records the run in defectgen.json (folder.py).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from defectgen.diffusion.data import fingerprint, read_training_samples
from defectgen.diffusion.ddpm import ConditionalDdpm, DdpmModel, UnconditionalDdpm, load_model, save_model
from defectgen.diffusion.folder import has_metadata, update_metadata
from defectgen.diffusion.models import TARGETS, min_resolution_multiple, preset_config
from defectgen.diffusion.options import DdpmTrainingOptions
from defectgen.diffusion.training import TrainConfig, TrainResult, checkpoints, main_decides, process_state, train_loop
from defectgen.errors import DefectgenError
from defectgen.io.output import OutputFolder
from defectgen.io.resolution import square_side


def train_ddpm(
    out: str | Path,
    normals: str | Path | None = None,
    labeled: str | Path | None = None,
    options: DdpmTrainingOptions | None = None,
    *,
    log=print,
    callback=None,
    **overrides: Any,
) -> DdpmModel:
    """Train the unconditional DDPM (normals only) or the conditional one (`labeled` given) and save it to `out`,
    with `options` (options.py; `overrides` replace single fields of it: `preset="tiny"`).

    Returns the trained model (EMA weights when EMA is on), loaded back from `out`."""
    o = replace(options or DdpmTrainingOptions(), **overrides)
    cfg, preset, crop, class_dropout, resume = o.config or TrainConfig(), o.preset, o.crop, o.class_dropout, o.resume
    _check_training_options(normals, labeled, preset, crop, class_dropout, o.target)
    if not 1 <= o.context <= 8:  # beyond 8 model sides a defect shrinks to a few pixels of the window
        raise DefectgenError(None, f"`context` must lie in [1, 8], got {o.context}")
    resolution = square_side(o.resolution, min_resolution_multiple(preset), "the DDPM")
    kind = ConditionalDdpm if labeled is not None else UnconditionalDdpm
    normal_samples, labeled_samples = read_training_samples(normals, labeled, o.on_bad)
    used = labeled_samples + normal_samples
    channels = 3 if any(s.channels == 3 for s in used) else 1
    resolution = _default_resolution(used, preset) if resolution is None else resolution
    class_names = sorted({s.class_name or "defect" for s in labeled_samples})
    boxes = bool(labeled_samples) and all(s.boxes for s in labeled_samples)

    folder, is_main = _prepare_run_folder(out, normals, labeled, resume, o.overwrite)
    if not is_main:
        log = lambda message: None  # noqa: E731
    torch.manual_seed(cfg.seed)
    model = kind.build(resolution, channels, preset, class_names, box_geometry=boxes, target=o.target)
    model.meta["context"] = float(o.context)
    data = model.examples(normal_samples, labeled_samples, crop, cfg.seed)
    meta = _training_meta(model, normals, labeled, normal_samples, labeled_samples, crop, class_dropout, cfg)
    log(_announcement(model, preset, len(data)))

    def save_fn(module: nn.Module, folder: Path) -> None:
        save_model(model, folder, **meta)  # `module` shares its parameters with `model`

    try:
        result = train_loop(model.module(), model.loss(class_dropout), data, out, cfg, save_fn, resume=resume,
                            callback=callback, log=log, trust_checkpoint=o.trust_checkpoint)
    except BaseException:
        if is_main:
            folder.abandon()  # interrupted before the first checkpoint: no empty run folder stays behind
        raise
    if is_main:
        _record_result(out, result)
    return load_model(out)


def _announcement(model: DdpmModel, preset: str, examples: int) -> str:
    """The line that opens a training run's log."""
    classes = model.class_names
    return (f"training {model.kind} ({preset}, {model.num_parameters() / 1e6:.2f}M parameters) at {model.resolution}x"
            f"{model.resolution}, {model.channels} channel(s), on {examples} examples"
            + (f", classes: {', '.join(classes)}" if classes else ""))


def _default_resolution(used: list, preset: str) -> int:
    """The shortest image side, at most 256, rounded down to the preset's multiple."""
    multiple = min_resolution_multiple(preset)
    side = min(min(s.height, s.width) for s in used)
    return max(multiple, min(256, side) // multiple * multiple)


def _check_training_options(normals, labeled, preset: str, crop: str, class_dropout: float, target: str) -> None:
    if normals is None and labeled is None:
        raise DefectgenError(None, "give `normals` (unconditional model) or `labeled` (conditional model)")
    if target not in TARGETS:
        raise DefectgenError(None, f"`target` must be one of {', '.join(TARGETS)}, not {target!r}")
    if target != "image" and labeled is None:
        raise DefectgenError(None, f"`target` {target} needs the conditional model: give `labeled` defects")
    if crop not in ("random", "resize"):
        raise DefectgenError(None, f"`crop` must be 'random' or 'resize', not {crop!r}")
    if not 0 <= class_dropout < 1:
        raise DefectgenError(None, "`class_dropout` must lie in [0, 1)")
    preset_config(preset)


def _prepare_run_folder(out, normals, labeled, resume: bool, overwrite: bool) -> tuple[OutputFolder, bool]:
    """The run folder (prepared by the main process only, under `torchrun` or `accelerate launch`; when it refuses,
    every process stops with its error) and whether this process is the main one (only it prepares, logs and
    records)."""
    state = process_state()  # joins the launcher's process group, also without a GPU
    folder = OutputFolder(out, overwrite=overwrite and not resume, resume=resume, verb="train-ddpm",
                          protect=[normals, labeled], worth_keeping=lambda d: bool(checkpoints(d)))
    main_decides(folder.prepare)
    return folder, state.is_main_process


def _training_meta(model: DdpmModel, normals, labeled, normal_samples: list, labeled_samples: list, crop: str,
                   class_dropout: float, cfg: TrainConfig) -> dict[str, Any]:
    """What defectgen.json records about the training run: class counts, options, and the data's fingerprint."""
    counts: dict[str, int] = {}
    for s in labeled_samples:
        counts[s.class_name or "defect"] = counts.get(s.class_name or "defect", 0) + 1
    used = labeled_samples + normal_samples
    paths = [s.path for s in used if s.path] + [s.mask_path for s in used if s.mask_path]
    return {
        "class_counts": counts, **model.training_record(crop, class_dropout),
        "training": {"steps": cfg.steps, "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": cfg.seed,
                     "mixed_precision": cfg.mixed_precision, "grad_accum": cfg.grad_accum, "ema": cfg.ema},
        "data": {"normals": str(normals) if normals else None, "labeled": str(labeled) if labeled else None,
                 "normal_images": len(normal_samples), "labeled_images": len(labeled_samples),
                 "fingerprint": fingerprint(paths)},
    }


def _record_result(out, result: TrainResult) -> None:
    """The run's final loss, speed and time into defectgen.json (for `defectgen runs`)."""
    if result.loss is not None and has_metadata(out):
        update_metadata(out, {"result": {"final_loss": result.loss, "images_per_second": result.images_per_second,
                                         "seconds": round(result.seconds, 1)}})
