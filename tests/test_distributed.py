"""Several processes make one training: two CPU processes started by torchrun (gloo) split the data, average the
gradients, keep identical weights, write the run folder once, stop together on SIGTERM and resume together.

Each launch starts two fresh interpreters that import torch and diffusers (10 s and more on two busy cores), so the
tests make two launches: the worker in this file (`python -m torch.distributed.run ... THIS_FILE FOLDER`) runs
three trainings one after the other in the same two processes, and the command line runs once.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
STEPS = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args, cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    for name in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), *map(str, args)]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


# ---- the worker: a tiny linear model through the real loop, every batch and every step's weights recorded --------

class _Data:
    def __len__(self) -> int:
        return 8

    def example(self, index: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        x = torch.from_numpy(rng.standard_normal(4).astype(np.float32)) + index
        return {"x": x, "index": torch.tensor(index)}


def _worker(base: Path) -> None:
    """A whole run; the same run where process 1 alone gets SIGTERM after step 2; its resume. Each phase leaves
    base/trace/<phase>-<rank>.json: the steps (weights digest, batch indices), the messages, the exit code."""
    from defectgen.diffusion.training import checkpoints

    for kind, out in (("whole", base / "whole"), ("cut", base / "cut"), ("resume", base / "cut")):
        _train(kind, out, base / "trace")
        if kind == "cut":
            listing = {str(s): sorted(p.name for p in folder.iterdir()) for s, folder in checkpoints(out)}
            listing["final"] = sorted(p.name for p in out.glob("final-*"))
            (base / "trace" / "cut-checkpoints.json").write_text(json.dumps(listing))


def _train(kind: str, out: Path, trace: Path) -> None:
    from defectgen.diffusion.training import Interrupted, TrainConfig, train_loop

    rank = int(os.environ["RANK"])
    torch.manual_seed(0)
    model = nn.Linear(4, 4)
    batches: list[list[int]] = []
    steps: list[dict] = []
    messages: list[str] = []

    def loss_fn(module: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        batches.append(batch["index"].tolist())
        x = batch["x"]
        return ((module(x + torch.randn_like(x)) - x) ** 2).mean()

    def callback(step: int, loss: float) -> None:
        weights = b"".join(p.detach().numpy().tobytes() for p in model.parameters())  # DDP shares these tensors
        steps.append({"step": step, "weights": hashlib.sha256(weights).hexdigest(), "batch": batches[-1]})
        if kind == "cut" and rank == 1 and step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # one process alone gets the signal; both must stop together

    def save_fn(module: nn.Module, folder: Path) -> None:
        (folder / f"final-{rank}.txt").write_text("saved")

    cfg = TrainConfig(steps=STEPS, batch_size=2, lr=1e-2, warmup_steps=1, checkpoint_every=2, progress=False,
                      ema_max_decay=0.9, seed=3)
    code = 0
    try:
        train_loop(model, loss_fn, _Data(), out, cfg, save_fn, resume=kind == "resume", callback=callback,
                   log=messages.append)
    except Interrupted as e:
        messages.append(str(e))
        code = e.exit_code
    trace.mkdir(parents=True, exist_ok=True)
    (trace / f"{kind}-{rank}.json").write_text(json.dumps({"steps": steps, "messages": messages, "code": code}))


def _read(trace: Path, kind: str) -> list[dict]:
    return [json.loads((trace / f"{kind}-{rank}.json").read_text()) for rank in (0, 1)]


# ---- the tests -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """One launch of the worker: a whole run, one that process 1 alone gets SIGTERM in, and its resume."""
    base = tmp_path_factory.mktemp("dist")
    done = _torchrun(Path(__file__), base, cwd=base)
    assert done.returncode == 0, done.stderr[-3000:]
    return base, base / "trace"


def test_two_processes_take_different_batches_and_keep_identical_weights(launched):
    base, trace = launched
    rank0, rank1 = _read(trace, "whole")
    assert [s["step"] for s in rank0["steps"]] == [s["step"] for s in rank1["steps"]] == list(range(1, STEPS + 1))
    for a, b in zip(rank0["steps"], rank1["steps"], strict=True):
        assert a["weights"] == b["weights"], f"step {a['step']}: the processes' weights differ"
        assert not set(a["batch"]) & set(b["batch"]), f"step {a['step']}: both processes took {a['batch']}"
    assert len({s["weights"] for s in rank0["steps"]}) == STEPS  # every step changed the weights
    # one model, written by process 0 only; each checkpoint holds both processes' RNG states, the rest once
    assert sorted(p.name for p in (base / "whole").glob("final-*")) == ["final-0.txt"]
    from defectgen.diffusion.training import checkpoints

    found = checkpoints(base / "whole")
    assert [s for s, _ in found] == [4, 6]
    for _, folder in found:
        assert sorted(p.name for p in folder.iterdir()) == sorted([
            "model.safetensors", "optimizer.safetensors", "ema.safetensors", "state.json",
            "rng-0.safetensors", "rng-0.json", "rng-1.safetensors", "rng-1.json"])
    said = rank0["messages"] + rank1["messages"]
    assert sum("process 0 of 2 joined (gloo, cpu)" in m for m in said) == 1, said


def test_sigterm_on_one_process_stops_both_at_the_same_step_and_resume_ends_where_the_whole_run_did(launched):
    base, trace = launched
    rank0, rank1 = _read(trace, "cut")
    assert rank0["code"] == rank1["code"] == 143
    # the signal came after step 2 on process 1: both finished step 3, saved it together, and said so
    assert [s["step"] for s in rank0["steps"]] == [s["step"] for s in rank1["steps"]] == [1, 2, 3]
    assert any("terminated (SIGTERM) at step 3" in m and "step-00000003" in m for m in rank0["messages"])
    listing = json.loads((trace / "cut-checkpoints.json").read_text())
    assert listing.pop("final") == []  # stopped: no model yet
    assert sorted(listing, key=int) == ["2", "3"]
    assert {"rng-0.safetensors", "rng-1.safetensors", "model.safetensors"} <= set(listing["3"])

    whole = {s["step"]: s for s in _read(trace, "whole")[0]["steps"]}
    for rank in _read(trace, "resume"):
        assert any("resuming from" in m and "at step 3" in m for m in rank["messages"]), rank["messages"]
        assert [s["step"] for s in rank["steps"]] == [4, 5, 6]
        for s in rank["steps"]:  # the same batches and the same weights as the uninterrupted run
            assert s["weights"] == whole[s["step"]]["weights"], f"step {s['step']}"
    assert sorted(p.name for p in (base / "cut").glob("final-*")) == ["final-0.txt"]


def test_torchrun_train_ddpm_without_out_makes_one_run_folder(tmp_path):
    """The command line: the main process picks runs/ddpm-1 and the other takes the same; one model, one record."""
    from tests.conftest import texture, write_png

    rng = np.random.default_rng(0)
    for i in range(4):
        write_png(tmp_path / "good" / f"{i}.png", texture(rng, 32, 32, 3))
    done = _torchrun("-m", "defectgen.cli", "train-ddpm", "--normals", "good", "--preset", "tiny", "--steps", "2",
                     "--batch-size", "1", "--resolution", "32", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["ddpm-1"]
    assert (tmp_path / "runs" / "ddpm-1" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert done.stderr.count("process 0 of 2 joined (gloo, cpu)") == 1, done.stderr
    assert done.stdout.count("saved ddpm model") == 1, done.stdout
    entries = json.loads((tmp_path / "defectgen-workspace.json").read_text())["entries"]
    assert [e["path"] for e in entries] == ["runs/ddpm-1"]


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
