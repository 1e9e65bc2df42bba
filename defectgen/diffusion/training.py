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


@dataclass
class _Run:
    """One training run's prepared parts: the accelerator, the wrapped model, optimizer, LR schedule and EMA."""

    accelerator: Any
    model: nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    ema: Any  # diffusers.training_utils.EMAModel or None

    def trainable(self) -> list[nn.Parameter]:
        return _trainable(self.accelerator.unwrap_model(self.model))


@dataclass
class _Progress:
    """Where the loop is: the last finished step, its loss, and the images/s measured since the last log."""

    done: int
    loss: float | None = None
    rate: float | None = None
    images: int = 0
    since: float = 0.0


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
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    if len(data) == 0:
        raise DefectgenError(None, "no training examples")
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.grad_accum < 1:
        raise DefectgenError(None, "steps, batch size and gradient accumulation must be at least 1")
    started = time.perf_counter()
    run = _prepare_run(module, cfg, out_dir)
    accelerator = run.accelerator
    start_step, resumed_from = 0, None
    if resume:
        resumed_from = _load_latest_checkpoint(accelerator, out_dir, log)
        start_step = resumed_from or 0
    if cfg.tensorboard:
        accelerator.init_trackers("defectgen", config={k: v for k, v in asdict(cfg).items()
                                                      if isinstance(v, (int, float, str, bool))})
    batches = _batch_iterator(data, cfg, accelerator, start_step)
    bar = tqdm(total=cfg.steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
               disable=not (cfg.progress and accelerator.is_local_main_process))
    run.model.train()
    progress = _Progress(done=start_step, since=time.perf_counter())
    try:
        for step in range(start_step + 1, cfg.steps + 1):
            _optimizer_step(run, cfg, loss_fn, batches, progress)
            progress.done = step
            _log_step(run, cfg, step, progress, bar)
            if cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                _save_checkpoint(accelerator, out_dir, step, cfg.keep_checkpoints)
            if callback is not None:
                callback(step, progress.loss)
    except KeyboardInterrupt:
        bar.close()
        done = progress.done
        raise Interrupted(done, _checkpoint_on_interrupt(accelerator, out_dir, cfg, done, start_step)) from None
    bar.close()
    if start_step < cfg.steps:
        _save_checkpoint(accelerator, out_dir, cfg.steps, cfg.keep_checkpoints)
    _save_final(run, save_fn, out_dir)
    if cfg.tensorboard:
        accelerator.end_training()
    return TrainResult(cfg.steps, progress.loss, progress.rate, resumed_from, time.perf_counter() - started)


def _prepare_run(module: nn.Module, cfg: TrainConfig, out_dir: Path) -> _Run:
    """The accelerator, then (seeded the same on every process) the optimizer, LR schedule and EMA of `module`,
    registered so that checkpoints hold them."""
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

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
    return _Run(accelerator, model, optimizer, lr_scheduler, ema)


def _batch_iterator(data: TrainingData, cfg: TrainConfig, accelerator, start_step: int):
    """This process's batches from micro-step `start_step * grad_accum` on, prefetched by a DataLoader."""
    batches = _StepBatches(data, cfg.batch_size, cfg.seed, accelerator.process_index, accelerator.num_processes)
    micro = range(start_step * cfg.grad_accum, cfg.steps * cfg.grad_accum)
    # Own generator: the loader must not draw from the global RNG that checkpoints restore for the noise.
    loader = torch.utils.data.DataLoader(batches, batch_size=None, sampler=micro, num_workers=cfg.num_workers,
                                         pin_memory=accelerator.device.type == "cuda",
                                         generator=torch.Generator().manual_seed(cfg.seed))
    return iter(loader)


def _optimizer_step(run: _Run, cfg: TrainConfig, loss_fn, batches, progress: _Progress) -> None:
    """One optimizer step over `cfg.grad_accum` micro-batches (gradients synchronised on the last only), then the
    LR schedule and EMA; the step's mean loss and the images seen go into `progress`."""
    accelerator, model = run.accelerator, run.model
    total = 0.0
    for m in range(cfg.grad_accum):
        batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in next(batches).items()}
        if cfg.channels_last:
            batch = {k: v.contiguous(memory_format=torch.channels_last) if v.ndim == 4 else v
                     for k, v in batch.items()}
        sync = m == cfg.grad_accum - 1
        with contextlib.nullcontext() if sync else accelerator.no_sync(model):
            loss = loss_fn(model, batch)
            accelerator.backward(loss / cfg.grad_accum)
        total += loss.detach().float().item() / cfg.grad_accum
        progress.images += next(iter(batch.values())).shape[0] * accelerator.num_processes
    if cfg.max_grad_norm > 0:
        accelerator.clip_grad_norm_(_trainable(model), cfg.max_grad_norm)
    run.optimizer.step()
    if not accelerator.optimizer_step_was_skipped:  # fp16 overflow: keep the schedule where it was
        run.lr_scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    if run.ema is not None:
        run.ema.step(run.trainable())
    progress.loss = total


def _log_step(run: _Run, cfg: TrainConfig, step: int, progress: _Progress, bar) -> None:
    """Every `cfg.log_every` steps (and the last): images/s and, with TensorBoard, the logs; the bar every step."""
    now = time.perf_counter()
    if step % cfg.log_every == 0 or step == cfg.steps:
        progress.rate = progress.images / max(now - progress.since, 1e-9)
        progress.images, progress.since = 0, now
        logs = {"loss": progress.loss, "lr": run.lr_scheduler.get_last_lr()[0], "images_per_s": progress.rate}
        if run.ema is not None and run.ema.cur_decay_value is not None:
            logs["ema_decay"] = run.ema.cur_decay_value
        if cfg.tensorboard:
            run.accelerator.log(logs, step=step)
    rate = progress.rate
    bar.set_postfix(loss=f"{progress.loss:.4f}", img_s="-" if rate is None else f"{rate:.1f}")
    bar.update(1)


def _save_final(run: _Run, save_fn: Callable[[nn.Module, Path], None], out_dir: Path) -> None:
    """`save_fn` on the main process, with the EMA weights swapped in (and the trained ones restored after)."""
    accelerator = run.accelerator
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(run.model)
        if run.ema is not None:
            run.ema.store(_trainable(unwrapped))
            run.ema.copy_to(_trainable(unwrapped))
        save_fn(unwrapped, out_dir)
        if run.ema is not None:
            run.ema.restore(_trainable(unwrapped))
    accelerator.wait_for_everyone()


# ---- image helpers shared by the DDPM and LDM datasets -------------------------------------------------------

def to_tensor(image: np.ndarray) -> torch.Tensor:
    """H x W x C float in [0, 1] -> C x H x W in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float() * 2.0 - 1.0
