"""One accelerate training loop for every diffusion model defectgen trains (DDPMs now, the LDM later).

What it does: mixed precision (bf16/fp16) and multi-GPU through `Accelerator` (so `accelerate launch defectgen
train-... ` works unchanged), gradient accumulation, an EMA of the weights (diffusers' `EMAModel`), LR warm-up and
schedule (`diffusers.optimization.get_scheduler`), a tqdm bar with loss and images/s, optional TensorBoard, and
atomic checkpoints (`save_state` into a temporary folder, then rename) that `resume=True` continues from.

Batches are a pure function of (seed, micro-step): the data order is a seeded permutation per epoch and every
example gets its own numpy Generator for augmentation. Together with the RNG states accelerate stores in each
checkpoint, a resumed run takes the same batches and noise as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from defectgen.errors import DefectgenError

CHECKPOINT_DIR = "checkpoints"
_PREFIX = "step-"


@dataclass
class TrainConfig:
    steps: int = 20000             # optimizer steps
    batch_size: int = 16           # per process, per micro-step
    lr: float = 1e-4
    lr_schedule: str = "cosine"    # any name diffusers.optimization.get_scheduler knows
    warmup_steps: int = 500
    weight_decay: float = 1e-6
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"    # no | fp16 | bf16
    ema: bool = True
    ema_max_decay: float = 0.9999
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    tensorboard: bool = False
    seed: int = 0
    num_workers: int = 0
    log_every: int = 10
    progress: bool = True
    # GPU speed-ups (no effect on what is learned): NHWC convolutions, torch.compile, fused AdamW on CUDA.
    channels_last: bool = False
    compile: bool = False
    fused_optimizer: bool = True
    # Ctrl-C saves a checkpoint at the last finished step, so --resume continues from there.
    save_on_interrupt: bool = True


class Interrupted(DefectgenError):
    """Training stopped by Ctrl-C (exit code 130); `checkpoint` is the folder --resume continues from, if any."""

    exit_code = 130

    def __init__(self, step: int, checkpoint: Path | None):
        self.step, self.checkpoint = step, checkpoint
        where = f"checkpoint {checkpoint}" if checkpoint else "nothing saved to resume from"
        super().__init__(None, f"interrupted at step {step} ({where})")


class TrainingData(Protocol):
    """Examples for the loop: `example(i, rng)` returns a dict of tensors (one example, no batch axis)."""

    def __len__(self) -> int: ...

    def example(self, index: int, rng: np.random.Generator) -> dict[str, torch.Tensor]: ...


class _StepBatches(torch.utils.data.Dataset):
    """Item k = this process's batch for global micro-step k, so a DataLoader over a range of k prefetches batches
    in worker processes and resuming at step k needs no replay."""

    def __init__(self, data: TrainingData, batch_size: int, seed: int, rank: int, world: int):
        self.data, self.batch_size, self.seed, self.rank, self.world = data, batch_size, seed, rank, world
        self._perm: tuple[int, np.ndarray] | None = None

    def _index(self, position: int) -> int:
        n = len(self.data)
        epoch = position // n
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(n))
        return int(self._perm[1][position % n])

    def __len__(self) -> int:  # unused: the loader iterates an explicit range of micro-steps
        return 2**62

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        start = (k * self.world + self.rank) * self.batch_size
        items = []
        for p in range(start, start + self.batch_size):
            items.append(self.data.example(self._index(p), np.random.default_rng([self.seed, 1, p])))
        return {key: torch.stack([it[key] for it in items]) for key in items[0]}


@dataclass
class TrainResult:
    step: int
    loss: float | None
    images_per_second: float | None
    resumed_from: int | None
    seconds: float


def checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """Finished checkpoints (step, folder), oldest first; temporary folders of a killed save and symbolic links
    are ignored."""
    root = Path(out_dir) / CHECKPOINT_DIR
    found = []
    if root.is_dir() and not root.is_symlink():
        for p in root.iterdir():
            if p.is_dir() and not p.is_symlink() and p.name.startswith(_PREFIX) and p.name[len(_PREFIX):].isdigit():
                found.append((int(p.name[len(_PREFIX):]), p))
    return sorted(found)


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why a checkpoint folder cannot be loaded (a truncated or corrupt file, named), or None if it looks whole.
    Reads the archives' structure and checksums only; nothing is unpickled."""
    import zipfile

    from safetensors import safe_open

    files = sorted(p for p in Path(folder).iterdir() if p.is_file())
    if not files:
        return f"{folder}: empty checkpoint"
    for f in files:
        try:
            if f.suffix == ".safetensors":
                with safe_open(str(f), framework="pt") as handle:
                    handle.keys()
            elif f.suffix in (".bin", ".pkl", ".pt", ".pth"):  # torch.save archives (zip with CRCs)
                if not zipfile.is_zipfile(f):
                    return f"{f}: truncated or not a torch archive"
                with zipfile.ZipFile(f) as archive:
                    bad = archive.testzip()
                if bad is not None:
                    return f"{f}: corrupt entry {bad}"
        except Exception as e:  # safetensors raises its own error types
            return f"{f}: cannot be read ({str(e).splitlines()[0][:120]})"
    return None


def _load_latest_checkpoint(accelerator, out_dir: Path, log: Callable[[str], None]) -> int | None:
    """Load the newest whole checkpoint, skipping (with a warning naming the file) damaged newer ones."""
    found = checkpoints(out_dir)
    if not found:
        log(f"no checkpoint under {out_dir / CHECKPOINT_DIR}; starting from step 0")
        return None
    problems = []
    for step, path in reversed(found):
        problem = checkpoint_problem(path)
        if problem is None:
            try:
                accelerator.load_state(str(path))
            except Exception as e:
                problem = f"{path}: cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
        if problem is None:
            if problems:
                log(f"warning: skipped damaged checkpoint(s): {'; '.join(problems)}; resuming from step {step}")
            log(f"resuming from {path} at step {step}")
            return step
        problems.append(problem)
    raise DefectgenError(None, f"no usable checkpoint to resume from: {'; '.join(problems)}; use --overwrite to "
                         "start again")


def _make_accelerator(cfg: TrainConfig, out_dir: Path):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    kwargs: dict[str, Any] = {}
    if cfg.tensorboard:
        kwargs["log_with"] = "tensorboard"
    try:
        return Accelerator(
            mixed_precision=cfg.mixed_precision,
            project_config=ProjectConfiguration(project_dir=str(out_dir), logging_dir=str(out_dir / "logs")),
            **kwargs,
        )
    except (ValueError, RuntimeError, ImportError) as e:
        raise DefectgenError(None, f"cannot set up training (mixed precision {cfg.mixed_precision!r}): {e}") from None


def _save_checkpoint(accelerator, out_dir: Path, step: int, keep: int) -> None:
    root = out_dir / CHECKPOINT_DIR
    final = root / f"{_PREFIX}{step:08d}"
    tmp = root / f".tmp-{_PREFIX}{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)  # a killed save leaves only .tmp-*, which resume ignores
        for _, old in checkpoints(out_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _checkpoint_on_interrupt(accelerator, out_dir: Path, cfg: TrainConfig, done: int, start_step: int) -> Path | None:
    """After Ctrl-C: save the last finished step (single process: other processes may be mid-step) and return the
    checkpoint --resume would continue from."""
    found = checkpoints(out_dir)
    if (cfg.save_on_interrupt and done > start_step and accelerator.num_processes == 1
            and (not found or found[-1][0] < done)):
        _save_checkpoint(accelerator, out_dir, done, cfg.keep_checkpoints)
        found = checkpoints(out_dir)
    return found[-1][1] if found else None


def _trainable(module: nn.Module) -> list[nn.Parameter]:
    """The parameters being trained: frozen parts (a VAE, a text encoder, LoRA's base weights) get no optimizer
    state and no EMA copy."""
    return [p for p in module.parameters() if p.requires_grad]


def train_loop(
    module: nn.Module,
    loss_fn: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor],
    data: TrainingData,
    out_dir: str | Path,
    cfg: TrainConfig,
    save_fn: Callable[[nn.Module, Path], None],
    resume: bool = False,
    callback: Callable[[int, float], None] | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train `module` for `cfg.steps` optimizer steps on `loss_fn(module, batch)`.

    `save_fn(module, out_dir)` writes the final model; it is called on the main process with the EMA weights
    swapped in. `callback(step, loss)` runs after every optimizer step (tests use it to interrupt a run).
    """
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    if len(data) == 0:
        raise DefectgenError(None, "no training examples")
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.grad_accum < 1:
        raise DefectgenError(None, "steps, batch size and gradient accumulation must be at least 1")
    started = time.perf_counter()
    accelerator = _make_accelerator(cfg, out_dir)
    torch.manual_seed(cfg.seed)  # same starting RNG state on every process; batches shard by rank below

    if cfg.channels_last:
        module = module.to(memory_format=torch.channels_last)
    fused = cfg.fused_optimizer and accelerator.device.type == "cuda"
    module.to(accelerator.device)  # fused AdamW needs the parameters on the GPU when it is built
    optimizer = torch.optim.AdamW(_trainable(module), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  **({"fused": True} if fused else {}))
    lr_scheduler = get_scheduler(
        cfg.lr_schedule, optimizer, num_warmup_steps=min(cfg.warmup_steps, cfg.steps), num_training_steps=cfg.steps,
    )
    model, optimizer = accelerator.prepare(module, optimizer)
    if cfg.compile:
        model = torch.compile(model)  # unwrap_model strips the compile wrapper again for EMA and saving
    # The LR schedule is stepped once per optimizer step ourselves (accelerate would step it once per process).
    accelerator.register_for_checkpointing(lr_scheduler)
    ema = None
    if cfg.ema:
        ema = EMAModel(_trainable(accelerator.unwrap_model(model)), decay=cfg.ema_max_decay, use_ema_warmup=True,
                       inv_gamma=1.0, power=3 / 4)
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)

    start_step, resumed_from = 0, None
    if resume:
        resumed_from = _load_latest_checkpoint(accelerator, out_dir, log)
        start_step = resumed_from or 0
    if cfg.tensorboard:
        accelerator.init_trackers("defectgen", config={k: v for k, v in asdict(cfg).items()
                                                      if isinstance(v, (int, float, str, bool))})

    batches = _StepBatches(data, cfg.batch_size, cfg.seed, accelerator.process_index, accelerator.num_processes)
    micro = range(start_step * cfg.grad_accum, cfg.steps * cfg.grad_accum)
    # Own generator: the loader must not draw from the global RNG that checkpoints restore for the noise.
    loader = torch.utils.data.DataLoader(batches, batch_size=None, sampler=micro, num_workers=cfg.num_workers,
                                         pin_memory=accelerator.device.type == "cuda",
                                         generator=torch.Generator().manual_seed(cfg.seed))
    it = iter(loader)
    bar = tqdm(total=cfg.steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
               disable=not (cfg.progress and accelerator.is_local_main_process))
    model.train()
    loss_value, rate, images, t_rate = None, None, 0, time.perf_counter()
    done = start_step
    try:
        for step in range(start_step + 1, cfg.steps + 1):
            total = 0.0
            for m in range(cfg.grad_accum):
                batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in next(it).items()}
                if cfg.channels_last:
                    batch = {k: v.contiguous(memory_format=torch.channels_last) if v.ndim == 4 else v
                             for k, v in batch.items()}
                sync = m == cfg.grad_accum - 1
                with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                    loss = loss_fn(model, batch)
                    accelerator.backward(loss / cfg.grad_accum)
                total += loss.detach().float().item() / cfg.grad_accum
                images += next(iter(batch.values())).shape[0] * accelerator.num_processes
            if cfg.max_grad_norm > 0:
                accelerator.clip_grad_norm_(_trainable(model), cfg.max_grad_norm)
            optimizer.step()
            if not accelerator.optimizer_step_was_skipped:  # fp16 overflow: keep the schedule where it was
                lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.step(_trainable(accelerator.unwrap_model(model)))
            done = step
            loss_value = total
            now = time.perf_counter()
            if step % cfg.log_every == 0 or step == cfg.steps:
                rate = images / max(now - t_rate, 1e-9)
                images, t_rate = 0, now
                logs = {"loss": loss_value, "lr": lr_scheduler.get_last_lr()[0], "images_per_s": rate}
                if ema is not None and ema.cur_decay_value is not None:
                    logs["ema_decay"] = ema.cur_decay_value
                if cfg.tensorboard:
                    accelerator.log(logs, step=step)
            bar.set_postfix(loss=f"{loss_value:.4f}", img_s="-" if rate is None else f"{rate:.1f}")
            bar.update(1)
            if cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                _save_checkpoint(accelerator, out_dir, step, cfg.keep_checkpoints)
            if callback is not None:
                callback(step, loss_value)
    except KeyboardInterrupt:
        bar.close()
        raise Interrupted(done, _checkpoint_on_interrupt(accelerator, out_dir, cfg, done, start_step)) from None
    bar.close()
    if start_step < cfg.steps:
        _save_checkpoint(accelerator, out_dir, cfg.steps, cfg.keep_checkpoints)

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        if ema is not None:
            ema.store(_trainable(unwrapped))
            ema.copy_to(_trainable(unwrapped))
        save_fn(unwrapped, out_dir)
        if ema is not None:
            ema.restore(_trainable(unwrapped))
    accelerator.wait_for_everyone()
    if cfg.tensorboard:
        accelerator.end_training()
    return TrainResult(cfg.steps, loss_value, rate, resumed_from, time.perf_counter() - started)


# ---- image helpers shared by the DDPM and LDM datasets -------------------------------------------------------

def match_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """H x W x C float -> H x W x `channels` (gray repeated to RGB, RGB to luma)."""
    c = image.shape[2]
    if c == channels:
        return image
    if channels == 3:
        return np.repeat(image, 3, axis=2)
    weights = np.array([0.299, 0.587, 0.114], np.float32)
    return (image[:, :, :3] @ weights)[:, :, None].astype(np.float32)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """H x W x C float in [0, 1] -> C x H x W in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float() * 2.0 - 1.0


def mask_window(height: int, width: int, mask: np.ndarray | None, resolution: int,
                rng: np.random.Generator | None = None, margin: float = 1.25) -> tuple[int, int, int, int]:
    """A window (y0, x0, h, w) of side max(resolution, mask extent * margin), clipped to the image, around the
    mask (jittered by `rng` so the mask is not always centred). Without a mask: a random (or centre) window."""
    side = resolution
    cy, cx = height / 2, width / 2
    if mask is not None and mask.any():
        ys, xs = np.nonzero(mask)
        y_lo, y_hi, x_lo, x_hi = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        side = max(resolution, math.ceil(max(y_hi - y_lo, x_hi - x_lo) * margin))
        cy, cx = (y_lo + y_hi) / 2, (x_lo + x_hi) / 2
        if rng is not None:
            slack = max(side - max(y_hi - y_lo, x_hi - x_lo), 0) / 2
            cy, cx = cy + rng.uniform(-slack, slack), cx + rng.uniform(-slack, slack)
    elif rng is not None:
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    h, w = min(side, height), min(side, width)
    y0 = int(np.clip(round(cy - h / 2), 0, height - h))
    x0 = int(np.clip(round(cx - w / 2), 0, width - w))
    return y0, x0, h, w
