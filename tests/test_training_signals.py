"""A killed training keeps its work: checkpoints by default every tenth of the run and every few minutes of wall
time, SIGTERM (docker stop, timeout, schedulers) saves the last finished step and exits 143 with the --resume hint,
the signal handlers in place before come back, and the time estimate prints above the progress bar."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_checkpoint_safety import _Data  # the same six-example data set
from torch import nn

from defectgen.diffusion import training
from defectgen.diffusion.training import (
    Interrupted,
    Terminated,
    TrainConfig,
    checkpoint_interval,
    checkpoints,
    train_loop,
)

ROOT = Path(__file__).resolve().parents[1]


def _loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    x = batch["x"]
    return ((model(x + torch.randn_like(x)) - x) ** 2).mean()


def _train(out: Path, callback=None, log=None, **cfg):
    torch.manual_seed(0)
    model = nn.Linear(4, 4)
    config = TrainConfig(**{"steps": 6, "batch_size": 2, "lr": 1e-2, "warmup_steps": 0, "progress": False,
                            "seed": 1, **cfg})
    train_loop(model, _loss, _Data(), out, config, lambda module, folder: None, callback=callback,
               log=log or (lambda m: None))
    return model


def test_the_default_interval_is_a_tenth_of_the_run_at_most_1000_steps():
    assert checkpoint_interval(TrainConfig(steps=300)) == 30  # the README's trial: not 1000, so kill -9 keeps work
    assert checkpoint_interval(TrainConfig(steps=20000)) == 1000
    assert checkpoint_interval(TrainConfig(steps=5)) == 1
    assert checkpoint_interval(TrainConfig(steps=300, checkpoint_every=7)) == 7  # given: taken as it is
    assert checkpoint_interval(TrainConfig(steps=300, checkpoint_every=0)) == 0


def test_with_20_steps_and_the_defaults_a_checkpoint_exists_by_step_2(tmp_path):
    seen = {}

    def callback(step, loss):
        seen[step] = [s for s, _ in checkpoints(tmp_path / "run")]

    _train(tmp_path / "run", callback, steps=20)
    assert 2 in seen[2]


def test_the_command_lines_default_checkpoints_a_tenth_of_the_run_and_a_typed_value_exactly(tmp_path, run_cli):
    from tests.conftest import texture, write_png

    rng = np.random.default_rng(0)
    for i in range(2):
        write_png(tmp_path / "good" / f"{i}.png", texture(rng, 16, 16))
    args = ("train-ddpm", "--normals", "good", "--preset", "tiny", "--resolution", "16", "--batch-size", "1",
            "--steps", "20", "--no-ema")
    code, _, err = run_cli(*args, "--out", "default")
    assert code == 0, err
    assert [s for s, _ in checkpoints(tmp_path / "default")] == [18, 20]  # every 2 steps, the last two kept
    code, _, err = run_cli(*args, "--out", "typed", "--checkpoint-every", "1000")
    assert code == 0, err
    assert [s for s, _ in checkpoints(tmp_path / "typed")] == [20]  # as asked: only the final one


def test_checkpoints_come_by_wall_time_too(tmp_path):
    _train(tmp_path / "timed", checkpoint_every=0, checkpoint_minutes=1e-9, keep_checkpoints=10)
    assert [s for s, _ in checkpoints(tmp_path / "timed")] == [1, 2, 3, 4, 5, 6]  # every step outran the clock
    _train(tmp_path / "off", checkpoint_every=0, checkpoint_minutes=0, keep_checkpoints=10)
    assert [s for s, _ in checkpoints(tmp_path / "off")] == [6]  # only the final one


def test_sigterm_saves_the_finished_step_raises_143_and_restores_the_handler(tmp_path):
    def mine(signum, frame):
        pass

    before = signal.signal(signal.SIGTERM, mine)
    try:
        def callback(step, loss):
            if step == 2:
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGTERM)  # a launcher passing the same signal on: not a second one

        with pytest.raises(Terminated, match=r"terminated \(SIGTERM\) at step 3") as info:
            _train(tmp_path / "run", callback, checkpoint_every=0, checkpoint_minutes=0)
        assert info.value.exit_code == 143 and info.value.checkpoint.name == "step-00000003"
        assert [s for s, _ in checkpoints(tmp_path / "run")] == [3]
        assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_second_signal_a_moment_later_stops_at_once_without_saving(tmp_path, monkeypatch):
    monkeypatch.setattr(training._StopSignals, "FORCE_AFTER_S", 0.0)

    def callback(step, loss):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted, match="interrupted at step 2") as info:
        _train(tmp_path / "run", callback, checkpoint_every=2, checkpoint_minutes=0)
    assert info.value.exit_code == 130 and info.value.checkpoint.name == "step-00000002"  # the one saved before
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_estimate_prints_above_the_progress_bar(tmp_path, monkeypatch):
    import defectgen.progress as progress

    bars = []
    real_bar = progress.bar

    def recording_bar(*args, **kwargs):
        bars.append(kwargs)
        return real_bar(*args, **kwargs)

    monkeypatch.setattr(progress, "bar", recording_bar)
    monkeypatch.setattr(progress, "above_bars", lambda log: lambda message: log(f"above: {message}"))
    messages = []
    _train(tmp_path / "run", log=messages.append, steps=6, progress=True)
    assert bars and bars[0]["desc"] == "train" and bars[0]["total"] == 6
    assert any(m.startswith("above: train: 6 steps on cpu") for m in messages), messages


def test_sigterm_on_the_command_line_exits_143_and_resume_ends_like_an_uninterrupted_run(tmp_path, run_cli):
    from tests.conftest import texture, write_png

    rng = np.random.default_rng(0)
    for i in range(4):
        write_png(tmp_path / "good" / f"{i}.png", texture(rng, 32, 32))
    args = ["train-ddpm", "--normals", "good", "--preset", "tiny", "--resolution", "32", "--batch-size", "2",
            "--steps", "60", "--checkpoint-every", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "defectgen.cli", *args, "--out", "cut"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not checkpoints(tmp_path / "cut") and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM) at step" in err and "; resume with --resume" in err, err
    step = int(err.split("terminated (SIGTERM) at step ")[1].split()[0])
    assert 2 <= step < 60 and checkpoints(tmp_path / "cut")[-1][0] == step
    assert not (tmp_path / "cut" / "defectgen.json").exists() or step == 60

    code, _, err = run_cli(*args, "--out", "cut", "--resume")
    assert code == 0 and f"at step {step}" in err, err
    code, _, err = run_cli(*args, "--out", "whole")
    assert code == 0, err
    from safetensors.torch import load_file

    cut = load_file(str(tmp_path / "cut" / "unet" / "diffusion_pytorch_model.safetensors"))
    whole = load_file(str(tmp_path / "whole" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert cut.keys() == whole.keys()
    for name in whole:
        assert torch.equal(cut[name], whole[name]), name


def test_the_resume_hint_names_the_run_folder_the_workspace_chose(tmp_path, run_cli, monkeypatch):
    """Without --out, --resume alone would be refused: the hint adds the folder."""
    from tests.conftest import texture, write_png

    rng = np.random.default_rng(0)
    for i in range(4):
        write_png(tmp_path / "good" / f"{i}.png", texture(rng, 32, 32))
    real_loop = training.train_loop

    def stopping_loop(*args, **kwargs):
        kwargs["callback"] = lambda step, loss: os.kill(os.getpid(), signal.SIGTERM) if step == 1 else None
        return real_loop(*args, **kwargs)

    import defectgen.diffusion.train_ddpm as ddpm

    monkeypatch.setattr(ddpm, "train_loop", stopping_loop)
    code, _, err = run_cli("train-ddpm", "--normals", "good", "--preset", "tiny", "--resolution", "32",
                           "--batch-size", "2", "--steps", "4", "--checkpoint-every", "0")
    assert code == 143, err
    assert "terminated (SIGTERM) at step 2" in err and "resume with --resume --out runs/ddpm-1" in err, err


def test_bf16_on_the_cpu_then_fp32_in_one_process_both_train_and_agree(tmp_path):
    """bf16 autocast runs on a CPU (1.47x the images/s of fp32 on an AMX CPU) and learns what fp32 learns; a later
    fp32 run in the same process is not refused by accelerate's one-precision-a-process state."""
    bf16 = _train(tmp_path / "bf16", mixed_precision="bf16", checkpoint_every=0)
    fp32 = _train(tmp_path / "fp32", mixed_precision="no", checkpoint_every=0)
    assert bf16.weight.dtype == torch.float32  # autocast: the weights and the optimizer stay fp32
    torch.manual_seed(0)
    start = nn.Linear(4, 4).weight  # where _train's model started
    assert (fp32.weight - start).abs().max() > 1e-3  # both trained
    assert torch.allclose(bf16.weight, fp32.weight, atol=2e-2)  # and to nearly the same weights
