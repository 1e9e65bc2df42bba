"""One accelerate training loop for every diffusion model defectgen trains: train_ddpm.py (both DDPM kinds) and
train_ldm.py (the inpainting LDM and its VAE) hand it a module, a loss (losses.py) and examples (data.py).

What it does: mixed precision (bf16/fp16) and several processes through `Accelerator` (processes started by
`torchrun` or `accelerate launch` join one process group, NCCL on GPUs and gloo on CPUs: see `process_state`),
gradient accumulation, an EMA of the weights (diffusers' `EMAModel`), LR warm-up and schedule
(`diffusers.optimization.get_scheduler`), a progress bar with loss and images/s, optional TensorBoard, and atomic
checkpoints (written into a temporary folder, then renamed) that `resume=True` continues from.

Checkpoints come every `checkpoint_interval(cfg)` steps (by default every tenth of the run, at most 1000 steps
apart) and every `cfg.checkpoint_minutes` of wall time. Ctrl-C and SIGTERM (what `docker stop`, `timeout` and
schedulers send) stop the run at the end of the step under way and save it, with one process or several (the
processes agree on the step through one small all-reduce per step); a second signal a second or more later stops
at once without saving.

Checkpoints hold no pickle, so resuming from a folder someone else made cannot run code. A checkpoint folder
`checkpoints/step-00001000/` holds
    model.safetensors      the unwrapped model's state_dict (weights and buffers)
    optimizer.safetensors  the optimizer's state tensors, named `state.<param_index>.<key>`
    ema.safetensors        the EMA weights, `shadow.<i>` (only with EMA)
    rng-<rank>.safetensors this process's RNG states as uint8 tensors: torch CPU, `cuda.<i>`, numpy, python
    rng-<rank>.json        the scalar parts of the numpy and python RNG states
    state.json             written last: format, step, config, LR schedule, optimizer param groups and non-tensor
                           state, EMA counters, GradScaler
Folders saved by older defectgen versions (accelerate's `save_state`: .bin/.pkl pickles) are refused unless
`trust_checkpoint=True`, which loads them with `accelerator.load_state`.

Batches are a pure function of (seed, micro-step): the data order is a seeded permutation per epoch and every
example gets its own numpy Generator for augmentation. Together with the RNG states stored in each checkpoint, a
resumed run takes the same batches and noise as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from defectgen.errors import DefectgenError
from defectgen.runtime import RunEstimate

CHECKPOINT_DIR = "checkpoints"
_PREFIX = "step-"
_STATE_FILE = "state.json"
_FORMAT = "defectgen-checkpoint"
_VERSION = 1
_PICKLE_SUFFIXES = (".pkl", ".bin", ".pt", ".pth")  # torch.save / pickle files: loading them can run code


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
    # Checkpoint every N steps; None: every tenth of the run, at most 1000 steps apart; 0: not by step count.
    checkpoint_every: int | None = None
    checkpoint_minutes: float = 10.0  # also once this much wall time has passed since the last one; 0: never
    keep_checkpoints: int = 2
    tensorboard: bool = False
    seed: int = 0
    num_workers: int = 0
    log_every: int = 10
    progress: bool = True
    # Speed-ups (no effect on what is learned): NHWC convolutions, torch.compile, fused AdamW (CUDA and CPU).
    channels_last: bool = False
    compile: bool = False
    fused_optimizer: bool = True
    # Ctrl-C and SIGTERM save a checkpoint at the last finished step, so --resume continues from there.
    save_on_interrupt: bool = True


DEFAULT_CHECKPOINT_CAP = 1000  # steps between checkpoints when `checkpoint_every` is None, at most


def default_checkpoint_every(steps: int, cap: int = DEFAULT_CHECKPOINT_CAP) -> int:
    """The checkpoint interval when none was asked for: a tenth of the run (so a 300-step trial killed at step 103
    keeps 90 steps), at least 1 and at most `cap` steps."""
    return min(cap, max(1, steps // 10))


def checkpoint_interval(cfg: TrainConfig) -> int:
    """Steps between checkpoints (0: none by step count): `cfg.checkpoint_every` when given, else
    `default_checkpoint_every(cfg.steps)`."""
    if cfg.checkpoint_every is None:
        return default_checkpoint_every(cfg.steps)
    return max(0, int(cfg.checkpoint_every))


class Interrupted(DefectgenError):
    """Training stopped by Ctrl-C (exit code 130); `checkpoint` is the folder --resume continues from, if any."""

    exit_code = 130
    verb = "interrupted"

    def __init__(self, step: int, checkpoint: Path | None):
        self.step, self.checkpoint = step, checkpoint
        where = f"checkpoint {checkpoint}" if checkpoint else "nothing saved to resume from"
        super().__init__(None, f"{self.verb} at step {step} ({where})")


class Terminated(Interrupted):
    """Training stopped by SIGTERM (exit code 143, 128 + 15, as the shell reports a process SIGTERM ended)."""

    exit_code = 143
    verb = "terminated (SIGTERM)"


def process_state():
    """accelerate's `PartialState`, made so that the processes `torchrun` or `accelerate launch --multi_gpu` start
    join one process group also without a GPU: accelerate uses the launcher's variables (LOCAL_RANK, WORLD_SIZE)
    on a CPU only when asked for a CPU run, and otherwise trains each process alone as "process 0 of 1". The first
    call decides for the whole process (accelerate keeps one shared state), so call this before anything else
    creates a `PartialState` or `Accelerator`."""
    from accelerate import PartialState

    return PartialState(cpu=_launched_without_gpu())


def _launched_without_gpu() -> bool:
    def number(name: str, default: int) -> int:
        try:
            return int(os.environ.get(name, default))
        except ValueError:
            return default

    launched = number("LOCAL_RANK", -1) != -1 or number("WORLD_SIZE", 1) > 1
    return launched and not torch.cuda.is_available()


def launch_warning() -> str | None:
    """What to say when `accelerate launch --cpu --num_processes N` started this one process: accelerate starts
    several CPU processes only through mpirun, so N > 1 silently trains once on one process."""
    started = any(os.environ.get(v) for v in ("LOCAL_RANK", "WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"))
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") and os.environ.get("MASTER_ADDR") \
            and not started:
        return ("accelerate launch --cpu started one process: accelerate starts several CPU processes only "
                "through mpirun, so this is one training on one process. For several processes on one machine use "
                "'torchrun --nproc_per_node N -m defectgen.cli ...' or 'accelerate launch --multi_gpu "
                "--num_processes N -m defectgen.cli ...' (gloo on a CPU)")
    return None


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
    """Why a checkpoint folder cannot be loaded (a truncated or corrupt file, a missing part, named), or None if it
    looks whole. Reads safetensors headers, JSON and archive checksums only; nothing is unpickled."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file())
    if not files:
        return f"{folder}: empty checkpoint"
    legacy = not (folder / _STATE_FILE).is_file()
    if legacy and not _pickle_files(folder):
        return f"{folder / _STATE_FILE}: missing"
    for f in files:  # a defectgen checkpoint never reads archives, so stray ones do not make it damaged
        problem = _file_problem(f) if legacy or f.suffix not in _PICKLE_SUFFIXES else None
        if problem is not None:
            return problem
    return None if legacy else _missing_part(folder)


def _file_problem(f: Path) -> str | None:
    import zipfile

    from safetensors import safe_open

    try:
        if f.suffix == ".safetensors":  # the header must parse and cover the whole file (catches truncation)
            with safe_open(str(f), framework="pt") as handle:
                handle.keys()
        elif f.suffix == ".json":
            json.loads(f.read_text())
        elif f.suffix in _PICKLE_SUFFIXES:  # torch.save archives (zip with CRCs)
            if not zipfile.is_zipfile(f):
                return f"{f}: truncated or not a torch archive"
            with zipfile.ZipFile(f) as archive:
                bad = archive.testzip()
            if bad is not None:
                return f"{f}: corrupt entry {bad}"
    except Exception as e:  # safetensors raises its own error types
        return f"{f}: cannot be read ({str(e).splitlines()[0][:120]})"
    return None


def _missing_part(folder: Path) -> str | None:
    """The first file a defectgen checkpoint needs that `folder` lacks, or a state.json of another format."""
    state = json.loads((folder / _STATE_FILE).read_text())
    if not isinstance(state, dict) or state.get("format") != _FORMAT or state.get("version") != _VERSION:
        return f"{folder / _STATE_FILE}: not a defectgen checkpoint (format version {_VERSION})"
    needed = ["model.safetensors", "optimizer.safetensors", "rng-0.safetensors", "rng-0.json"]
    if state.get("ema") is not None:
        needed.append("ema.safetensors")
    for name in needed:
        if not (folder / name).is_file():
            return f"{folder / name}: missing"
    return None


def _pickle_files(folder: str | Path) -> list[Path]:
    """Files in `folder` (at any depth) that only pickle can load."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in _PICKLE_SUFFIXES)


def _load_latest_checkpoint(run: _Run, out_dir: Path, log: Callable[[str], None],
                            trust_checkpoint: bool = False) -> int | None:
    """Load the newest whole checkpoint, skipping (with a warning naming the file) damaged newer ones. A folder
    with pickle files is refused outright unless trusted: a planted file must stop the run, not be skipped. With
    several processes the main process lists the checkpoints and a folder counts as whole only if every process
    loaded it, so all resume from the same step."""
    found = main_decides(lambda: checkpoints(out_dir))
    if not found:
        log(f"no checkpoint under {out_dir / CHECKPOINT_DIR}; starting from step 0")
        return None
    problems = []
    for step, path in reversed(found):
        refusal, problem = _everyone(run, _try_checkpoint(run, path, step, trust_checkpoint))
        if refusal is not None:
            raise _said_by_all(run, DefectgenError(*refusal))
        if problem is None:
            if problems:
                log(f"warning: skipped damaged checkpoint(s): {'; '.join(problems)}; resuming from step {step}")
            log(f"resuming from {path} at step {step}")
            return step
        problems.append(problem)
    raise _said_by_all(run, DefectgenError(None, f"no usable checkpoint to resume from: {'; '.join(problems)}; use "
                                           "`overwrite` to start again"))


def _said_by_all(run: _Run, error: DefectgenError) -> DefectgenError:
    """An error every process raises alike: on all but the main one it is marked `other_process`, which the command
    line exits on without printing it again."""
    if not run.accelerator.is_main_process:
        error.other_process = True
    return error


def _try_checkpoint(run: _Run, path: Path, step: int, trust_checkpoint: bool) -> tuple[tuple | None, str | None]:
    """Load `path` into the run: (refusal, problem), both None when it loaded. A refusal is the (path, message) of a
    pickle file nobody trusted; a problem says why the folder is skipped for an older one."""
    pickles = _pickle_files(path)
    if pickles and not trust_checkpoint:
        return (str(pickles[0]), "checkpoint file in a format that can run code when loaded (pickle); set "
                "`trust_checkpoint` to load it, only if you made it yourself"), None
    problem = checkpoint_problem(path)
    legacy = bool(pickles) and not (path / _STATE_FILE).is_file()
    rank = run.accelerator.process_index
    if problem is None and not legacy and not (path / f"rng-{rank}.safetensors").is_file():
        problem = (f"{path / f'rng-{rank}.safetensors'}: missing (saved by fewer processes than the "
                   f"{run.accelerator.num_processes} of this run)")
    if problem is None:
        try:
            _load_checkpoint(run, path, step, legacy=legacy)
        except Exception as e:
            problem = f"{path}: cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    return None, problem


def _everyone(run: _Run, verdict: tuple[tuple | None, str | None]) -> tuple[tuple | None, str | None]:
    """One process's (refusal, problem) made every process's: the first refusal, else the first problem."""
    if run.accelerator.num_processes == 1:
        return verdict
    import torch.distributed as dist

    verdicts: list[Any] = [None] * run.accelerator.num_processes
    dist.all_gather_object(verdicts, verdict)
    refusal = next((r for r, _ in verdicts if r is not None), None)
    return refusal, next((p for _, p in verdicts if p is not None), None)


def main_decides(fn: Callable[[], Any]) -> Any:
    """`fn()` run on the main process alone and its result handed to every process (a launched run joins the
    process group first, see `process_state`), so that all go on with the same value, such as the run folder
    the main process made. If `fn` raises a DefectgenError the other processes raise the same one, marked
    `other_process = True` (the command line exits on it without printing it a second time); anything else it
    raises stops the others with a RuntimeError naming it."""
    state = process_state()
    if state.num_processes == 1:
        return fn()
    import torch.distributed as dist

    box: list[Any] = [None]
    failure: BaseException | None = None
    if state.is_main_process:
        try:
            box = [("ok", fn())]
        except DefectgenError as e:
            box, failure = [("error", (e.path, e.message, e.exit_code))], e
        except BaseException as e:
            box, failure = [("crash", f"{type(e).__name__}: {e}")], e
    dist.broadcast_object_list(box, src=0)
    if failure is not None:
        raise failure
    kind, value = box[0]
    if kind == "ok":
        return value
    if kind == "error":
        error = DefectgenError(value[0], value[1])
        error.exit_code, error.other_process = value[2], True
        raise error
    raise RuntimeError(f"process 0 failed ({value})")


def _load_checkpoint(run: _Run, folder: Path, step: int, legacy: bool) -> None:
    if legacy:  # trusted by the caller: an older defectgen's `save_state` folder
        run.accelerator.load_state(str(folder))
        if run.ema is not None:
            run.ema.to(run.accelerator.device)  # accelerate loads registered objects onto the CPU
        return
    _read_state(run, folder, step)


def _make_accelerator(cfg: TrainConfig, out_dir: Path):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    kwargs: dict[str, Any] = {}
    if cfg.tensorboard:
        kwargs["log_with"] = "tensorboard"
    try:
        process_state()  # first: join the launcher's process group, also on CPUs
        # accelerate keeps one mixed precision a process and refuses another: each run sets its own (bf16, then
        # fp32 in one notebook). Only the per-run state goes; the process group (PartialState) stays.
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=False)
        return Accelerator(
            mixed_precision=cfg.mixed_precision, cpu=_launched_without_gpu(),
            project_config=ProjectConfiguration(project_dir=str(out_dir), logging_dir=str(out_dir / "logs")),
            **kwargs,
        )
    except (ValueError, RuntimeError, ImportError) as e:
        raise DefectgenError(None, f"cannot set up training (mixed precision {cfg.mixed_precision!r}): {e}") from None


def _save_checkpoint(run: _Run, out_dir: Path, step: int) -> None:
    accelerator = run.accelerator
    root = out_dir / CHECKPOINT_DIR
    final = root / f"{_PREFIX}{step:08d}"
    tmp = root / f".tmp-{_PREFIX}{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    _write_state(run, tmp, step)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)  # a killed save leaves only .tmp-*, which resume ignores
        keep = run.cfg.keep_checkpoints
        for _, old in checkpoints(out_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1))


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def _write_state(run: _Run, folder: Path, step: int) -> None:
    """Every process writes its RNG states, the main process everything else; state.json last."""
    from safetensors.torch import save_file, save_model

    accelerator = run.accelerator
    rng_tensors, rng_scalars = _rng_state()
    save_file(rng_tensors, str(folder / f"rng-{accelerator.process_index}.safetensors"))
    _write_json(folder / f"rng-{accelerator.process_index}.json", rng_scalars)
    if not accelerator.is_main_process:
        return
    # save_model drops the duplicate names of tied weights, which save_file refuses
    save_model(accelerator.unwrap_model(run.model), str(folder / "model.safetensors"), force_contiguous=True)
    optimizer_tensors, optimizer_rest = _split_optimizer(run.optimizer.state_dict())
    save_file(_cpu(optimizer_tensors), str(folder / "optimizer.safetensors"))
    ema = None
    if run.ema is not None:
        ema = {k: v for k, v in run.ema.state_dict().items() if k != "shadow_params"}
        save_file(_cpu({f"shadow.{i}": t for i, t in enumerate(run.ema.shadow_params)}),
                  str(folder / "ema.safetensors"))
    scaler = getattr(accelerator, "scaler", None)
    _write_json(folder / _STATE_FILE, {
        "format": _FORMAT, "version": _VERSION, "step": step, "config": asdict(run.cfg),
        "lr_scheduler": run.lr_scheduler.state_dict(), "optimizer": optimizer_rest, "ema": ema,
        "scaler": scaler.state_dict() if scaler is not None else None,
    })


def load_checkpoint_weights(module: nn.Module, folder: str | Path, ema: bool) -> None:
    """Put a checkpoint's weights into `module` (the module that was trained, built the same way): the trained
    weights of `model.safetensors`, or with `ema` the EMA copy of its trainable parameters. A checkpoint holds both,
    so a run can be read at any saved step and either way without training again. Safetensors only."""
    from safetensors.torch import load_file, load_model

    folder = Path(folder)
    problem = checkpoint_problem(folder)
    if problem is not None:
        raise DefectgenError(None, problem)
    try:
        if not ema:
            load_model(module, str(folder / "model.safetensors"), strict=True)
            return
        state = json.loads((folder / _STATE_FILE).read_text())
        if state.get("ema") is None:
            raise DefectgenError(folder, "the checkpoint has no EMA weights (trained without EMA)")
        _copy_shadow(load_file(str(folder / "ema.safetensors")), _trainable(module))
    except (OSError, ValueError, RuntimeError) as e:  # a checkpoint of another model, or a damaged one
        raise DefectgenError(folder, f"cannot load the checkpoint's weights ({str(e).splitlines()[0][:200]})") from None


def _read_state(run: _Run, folder: Path, step: int) -> None:
    """Load a checkpoint written by `_write_state` into the run; safetensors and JSON only."""
    from safetensors.torch import load_file, load_model

    state = json.loads((folder / _STATE_FILE).read_text())
    if state.get("step") != step:
        raise ValueError(f"{_STATE_FILE} says step {state.get('step')}, the folder name step {step}")
    accelerator = run.accelerator
    rank = accelerator.process_index
    rng_tensors = load_file(str(folder / f"rng-{rank}.safetensors"))
    rng_scalars = json.loads((folder / f"rng-{rank}.json").read_text())
    load_model(accelerator.unwrap_model(run.model), str(folder / "model.safetensors"), strict=True)
    run.optimizer.load_state_dict(_join_optimizer(load_file(str(folder / "optimizer.safetensors")),
                                                  state["optimizer"], run.optimizer))
    run.lr_scheduler.load_state_dict(state["lr_scheduler"])
    if run.ema is not None:
        if state.get("ema") is None:
            raise ValueError("the checkpoint has no EMA weights")
        _load_ema(run.ema, load_file(str(folder / "ema.safetensors")), state["ema"])
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    _set_rng_state(rng_tensors, rng_scalars)


def _split_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer state_dict as `state.<param_index>.<key>` tensors plus the JSON-able rest."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in state_dict["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value
            elif value is None or isinstance(value, (bool, int, float)):
                scalars.setdefault(str(index), {})[key] = value
            else:
                raise TypeError(f"optimizer state {key!r} is a {type(value).__name__}, not a tensor or number")
    return tensors, {"param_groups": state_dict["param_groups"], "state": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], rest: dict, optimizer) -> dict:
    """The inverse of `_split_optimizer`; values that JSON turned from tuples into lists (AdamW's betas) are made
    tuples again where the live optimizer has tuples."""
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = tensor
    for index, entries in rest["state"].items():
        state.setdefault(int(index), {}).update(entries)
    groups = []
    for saved, live in zip(rest["param_groups"], optimizer.state_dict()["param_groups"], strict=True):
        groups.append({k: tuple(v) if isinstance(live.get(k), tuple) else v for k, v in saved.items()})
    return {"state": state, "param_groups": groups}


def _load_ema(ema, tensors: dict[str, torch.Tensor], scalars: dict) -> None:
    """Counters from JSON; the weights copied into the existing shadow tensors, which keeps their device."""
    _check_shadow(tensors, ema.shadow_params)
    ema.load_state_dict(scalars)  # without shadow_params it keeps the current ones
    _copy_shadow(tensors, ema.shadow_params)


def _check_shadow(tensors: dict[str, torch.Tensor], targets: list[torch.Tensor]) -> None:
    """ema.safetensors' `shadow.<i>` tensors match `targets` one to one, shape for shape, or a ValueError."""
    if sorted(tensors) != sorted(f"shadow.{i}" for i in range(len(targets))):
        raise ValueError(f"the EMA has {len(tensors)} tensors, the model {len(targets)} trainable parameters")
    for i, t in enumerate(targets):
        if tensors[f"shadow.{i}"].shape != t.shape:  # copy_ would broadcast silently
            raise ValueError(f"EMA tensor {i} has shape {tuple(tensors[f'shadow.{i}'].shape)}, not {tuple(t.shape)}")


def _copy_shadow(tensors: dict[str, torch.Tensor], targets: list[torch.Tensor]) -> None:
    """The `shadow.<i>` tensors copied into `targets` in place (an EMA's shadow, or the parameters themselves)."""
    _check_shadow(tensors, targets)
    with torch.no_grad():
        for i, t in enumerate(targets):
            t.copy_(tensors[f"shadow.{i}"])


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's RNG states: the big parts as uint8 tensors, the scalars for JSON."""
    tensors = {"torch": torch.get_rng_state()}
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    tensors.update({f"cuda.{i}": s for i, s in enumerate(cuda)})
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(np.asarray(keys, "<u4").view(np.uint8).copy())
    version, internal, gauss_next = random.getstate()
    tensors["python"] = torch.from_numpy(np.asarray(internal, "<u4").view(np.uint8).copy())
    scalars = {"cuda_devices": len(cuda), "numpy": [kind, int(pos), int(has_gauss), float(cached)],
               "python": [version, gauss_next]}
    return tensors, scalars


def _set_rng_state(tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():  # as many devices as both runs have
        for i in range(min(int(scalars["cuda_devices"]), torch.cuda.device_count())):
            torch.cuda.set_rng_state(tensors[f"cuda.{i}"], i)
    kind, pos, has_gauss, cached = scalars["numpy"]
    np.random.set_state((kind, tensors["numpy"].numpy().view("<u4").copy(), pos, has_gauss, cached))
    version, gauss_next = scalars["python"]
    random.setstate((version, tuple(int(x) for x in tensors["python"].numpy().view("<u4")), gauss_next))


def _checkpoint_on_interrupt(run: _Run, out_dir: Path, done: int, start_step: int, agreed: bool) -> Path | None:
    """After Ctrl-C or SIGTERM: save the last finished step and return the checkpoint --resume would continue from.
    With several processes only a stop every process agreed on (`agreed`: they all finished step `done` and wait
    here) can save; a KeyboardInterrupt raised on one process alone saves nothing, as the others may be mid-step."""
    found = checkpoints(out_dir)
    if (run.cfg.save_on_interrupt and done > start_step and (agreed or run.accelerator.num_processes == 1)
            and (not found or found[-1][0] < done)):
        _save_checkpoint(run, out_dir, done)
        found = checkpoints(out_dir)
    return found[-1][1] if found else None


class _Abort(KeyboardInterrupt):
    """A second Ctrl-C or SIGTERM: stop now, mid-step, saving nothing."""


class _StopSignals:
    """While training: Ctrl-C (SIGINT) and SIGTERM only ask the loop to stop at the end of the step under way
    (`requested`), so the checkpoint it saves is a whole step. A second signal at least `FORCE_AFTER_S` later stops
    at once (launchers such as torchrun pass on the signal the terminal already sent, within milliseconds). The
    previous handlers come back on exit. Outside the main thread nothing is installed (Python allows handlers only
    there), and the signals act as before."""

    FORCE_AFTER_S = 1.0

    def __init__(self):
        self.requested: int | None = None
        self._first = 0.0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    self._previous[sig] = signal.signal(sig, self._handle)
                except (ValueError, OSError):  # an embedded interpreter may not allow it
                    pass
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        now = time.monotonic()
        if self.requested is None:
            self.requested, self._first = signum, now
        elif now - self._first >= self.FORCE_AFTER_S:
            self.restore()
            raise _Abort()


def _stop_error(signum: int | None) -> type[Interrupted]:
    return Terminated if signum == signal.SIGTERM else Interrupted


def _agree(run: _Run, progress: _Progress, stop: _StopSignals, due: bool) -> tuple[int | None, bool]:
    """After a step: whether to stop (the signal any process received) and whether a checkpoint is due (the main
    process's clock decides), the same on every process; with several processes the loss shown becomes the mean
    over them. One process: no communication."""
    accelerator = run.accelerator
    if accelerator.num_processes == 1:
        return stop.requested, due
    import torch.distributed as dist

    main = accelerator.is_main_process
    flags = torch.tensor([progress.loss or 0.0, float(stop.requested == signal.SIGTERM),
                          float(stop.requested is not None), float(due and main)],
                         dtype=torch.float64, device=accelerator.device)
    dist.all_reduce(flags)
    loss, term, any_stop, due_main = flags.tolist()
    progress.loss = loss / accelerator.num_processes
    signum = (signal.SIGTERM if term else signal.SIGINT) if any_stop else None
    return signum, bool(due_main)


def _trainable(module: nn.Module) -> list[nn.Parameter]:
    """The parameters being trained: frozen parts (a VAE, a text encoder, LoRA's base weights) get no optimizer
    state and no EMA copy."""
    return [p for p in module.parameters() if p.requires_grad]


@dataclass
class _Run:
    """One training run's prepared parts: the accelerator, the wrapped model, optimizer, LR schedule and EMA."""

    cfg: TrainConfig
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
    *,
    trust_checkpoint: bool = False,
) -> TrainResult:
    """Train `module` for `cfg.steps` optimizer steps on `loss_fn(module, batch)`.

    `save_fn(module, out_dir)` writes the final model; it is called on the main process with the EMA weights
    swapped in. `callback(step, loss)` runs after every optimizer step (tests use it to interrupt a run).
    `trust_checkpoint` lets `resume` load checkpoint folders holding pickle files (older defectgen versions).

    Ctrl-C raises `Interrupted` (exit code 130), SIGTERM `Terminated` (143), each after saving the last finished
    step when `cfg.save_on_interrupt`; the signal handlers in place before come back when the loop ends.
    """
    from defectgen.progress import above_bars
    from defectgen.progress import bar as progress_bar

    out_dir = Path(out_dir)
    _check_loop(data, cfg)
    started = time.perf_counter()
    run = _prepare_run(module, cfg, out_dir)
    accelerator = run.accelerator
    start_step, resumed_from = 0, None
    if resume:
        resumed_from = _load_latest_checkpoint(run, out_dir, log, trust_checkpoint)
        start_step = resumed_from or 0
    if cfg.tensorboard:
        accelerator.init_trackers("defectgen", config={k: v for k, v in asdict(cfg).items()
                                                      if isinstance(v, (int, float, str, bool))})
    batches = _batch_iterator(data, cfg, accelerator, start_step)
    if accelerator.num_processes > 1 and accelerator.is_main_process:
        log(f"process {accelerator.process_index} of {accelerator.num_processes} joined ({_backend()}, "
            f"{accelerator.device.type}): batch {cfg.batch_size} per process, "
            f"{cfg.batch_size * accelerator.num_processes} per micro-step")
    bar = progress_bar(total=cfg.steps, initial=start_step, desc="train", unit="step", leave=True,
                       disable=not (cfg.progress and accelerator.is_local_main_process))
    run.model.train()
    progress = _Progress(done=start_step, since=time.perf_counter())
    estimate = RunEstimate(cfg.steps - start_step, accelerator.device,
                           above_bars(log) if accelerator.is_local_main_process else None, what="train")
    with _StopSignals() as stop:
        _run_steps(run, loss_fn, batches, out_dir, start_step, progress, stop, bar, estimate, callback)
        bar.close()
        if start_step < cfg.steps:
            _save_checkpoint(run, out_dir, cfg.steps)
        _save_final(run, save_fn, out_dir)
    if cfg.tensorboard:
        accelerator.end_training()
    return TrainResult(cfg.steps, progress.loss, progress.rate, resumed_from, time.perf_counter() - started)


def _check_loop(data: TrainingData, cfg: TrainConfig) -> None:
    if len(data) == 0:
        raise DefectgenError(None, "no training examples")
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.grad_accum < 1:
        raise DefectgenError(None, "steps, batch size and gradient accumulation must be at least 1")


def _run_steps(run: _Run, loss_fn, batches, out_dir: Path, start_step: int, progress: _Progress,
               stop: _StopSignals, bar, estimate: RunEstimate, callback: Callable[[int, float], None] | None) -> None:
    """The optimizer steps from `start_step` + 1 to `cfg.steps`, with the checkpoints that come due. A stop signal
    (or a KeyboardInterrupt mid-step) raises Interrupted or Terminated naming the checkpoint to resume from."""
    cfg = run.cfg
    every, seconds = checkpoint_interval(cfg), cfg.checkpoint_minutes * 60.0
    last_save = time.monotonic()
    try:
        for step in range(start_step + 1, cfg.steps + 1):
            _optimizer_step(run, cfg, loss_fn, batches, progress)
            progress.done = step
            due = (every > 0 and step % every == 0) or (seconds > 0 and time.monotonic() - last_save >= seconds)
            signum, due = _agree(run, progress, stop, due)
            estimate.update(step - start_step)
            _log_step(run, cfg, step, progress, bar)
            if due and step < cfg.steps:
                _save_checkpoint(run, out_dir, step)
                last_save = time.monotonic()
            if callback is not None:
                callback(step, progress.loss)
            if signum is not None and step < cfg.steps:  # every process stops after this same step
                bar.close()
                raise _stop_error(signum)(step, _checkpoint_on_interrupt(run, out_dir, step, start_step,
                                                                         agreed=True))
    except KeyboardInterrupt as e:  # raised mid-step (a second signal, a callback): no agreement to rely on
        bar.close()
        done = progress.done
        saved = None if isinstance(e, _Abort) else _checkpoint_on_interrupt(run, out_dir, done, start_step,
                                                                             agreed=False)
        if saved is None and isinstance(e, _Abort):
            found = checkpoints(out_dir)
            saved = found[-1][1] if found else None
        raise _stop_error(stop.requested)(done, saved) from None


def _backend() -> str:
    import torch.distributed as dist

    return str(dist.get_backend()) if dist.is_available() and dist.is_initialized() else "no process group"


def _prepare_run(module: nn.Module, cfg: TrainConfig, out_dir: Path) -> _Run:
    """The accelerator, then (seeded the same on every process) the optimizer, LR schedule and EMA of `module`,
    that checkpoints hold."""
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    accelerator = _make_accelerator(cfg, out_dir)
    torch.manual_seed(cfg.seed)  # same starting RNG state on every process; batches shard by rank below
    if cfg.channels_last:
        module = module.to(memory_format=torch.channels_last)
    # torch's fused AdamW kernel runs on CUDA and on the CPU (one pass over all parameters, not a Python loop)
    fused = cfg.fused_optimizer and accelerator.device.type in ("cuda", "cpu")
    module.to(accelerator.device)  # fused AdamW needs the parameters on their device when it is built
    optimizer = torch.optim.AdamW(_trainable(module), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  **({"fused": True} if fused else {}))
    lr_scheduler = get_scheduler(
        cfg.lr_schedule, optimizer, num_warmup_steps=min(cfg.warmup_steps, cfg.steps), num_training_steps=cfg.steps,
    )
    model, optimizer = accelerator.prepare(module, optimizer)  # several processes: DDP averages the gradients
    if accelerator.process_index > 0:  # each process its own noise (process 0 keeps that of a one-process run)
        torch.manual_seed(cfg.seed + 100_003 * accelerator.process_index)
    if cfg.compile:
        model = torch.compile(model)  # unwrap_model strips the compile wrapper again for EMA and saving
    # The LR schedule is stepped once per optimizer step ourselves (accelerate would step it once per process).
    # Registered (with the EMA) only for `load_state` of trusted older checkpoints; saving never pickles.
    accelerator.register_for_checkpointing(lr_scheduler)
    ema = None
    if cfg.ema:
        ema = EMAModel(_trainable(accelerator.unwrap_model(model)), decay=cfg.ema_max_decay, use_ema_warmup=True,
                       inv_gamma=1.0, power=3 / 4, foreach=True)  # one multi-tensor update, not one per tensor
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)
    return _Run(cfg, accelerator, model, optimizer, lr_scheduler, ema)


def _batch_iterator(data: TrainingData, cfg: TrainConfig, accelerator, start_step: int):
    """This process's batches from micro-step `start_step * grad_accum` on, prefetched by a DataLoader."""
    batches = _StepBatches(data, cfg.batch_size, cfg.seed, accelerator.process_index, accelerator.num_processes)
    micro = range(start_step * cfg.grad_accum, cfg.steps * cfg.grad_accum)
    # Own generator: the loader must not draw from the global RNG that checkpoints restore for the noise. Its
    # state needs no checkpoint: it only seeds workers, and batches depend on (seed, micro-step) alone.
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
    bar.set_postfix(loss=f"{progress.loss:.4f}", img_s="-" if rate is None else f"{rate:.1f}", refresh=False)
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
