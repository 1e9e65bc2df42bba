"""Training checkpoints hold no pickle: a planted pickle is refused unread, the new format resumes bit-exactly,
and older accelerate folders load only with `trust_checkpoint` (a tiny linear model, CPU, seconds)."""

from __future__ import annotations

import json
import pickle
import random

import numpy as np
import pytest
import torch
from torch import nn

from defectgen.diffusion import training
from defectgen.diffusion.training import Interrupted, TrainConfig, checkpoint_problem, checkpoints, train_loop
from defectgen.errors import DefectgenError


class _Payload:
    """Unpickling this creates `marker`: the code a crafted checkpoint could run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


class _Data:
    def __len__(self) -> int:
        return 6

    def example(self, index: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        return {"x": torch.from_numpy(rng.standard_normal(4).astype(np.float32)) + index}


def _loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    # Draws from the torch, numpy and python global RNGs, so a resume matches only if all three are restored.
    x = batch["x"]
    noise = torch.randn_like(x) + float(np.random.standard_normal()) + random.random()
    return ((model(x + noise) - x) ** 2).mean()


def _cfg(steps: int, **kw) -> TrainConfig:
    return TrainConfig(**{"steps": steps, "batch_size": 2, "grad_accum": 2, "lr": 1e-2, "lr_schedule": "cosine",
                          "warmup_steps": 1, "ema_max_decay": 0.9, "checkpoint_every": 2, "progress": False,
                          "seed": 3, **kw})


def _train(out, steps: int, rng_seed: int = 0, **kw):
    """Train a fresh (same-initialised) model; returns its weights, the EMA weights save_fn saw, the global RNG
    states at the end, and the log."""
    torch.manual_seed(0)
    np.random.seed(rng_seed)  # a resumed run starts from other global RNG states: the checkpoint must restore them
    random.seed(rng_seed)
    model, seen, messages = nn.Linear(4, 4), {}, []

    def save_fn(module: nn.Module, folder) -> None:
        seen["ema"] = {k: v.clone() for k, v in module.state_dict().items()}
        seen["rng"] = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())

    train_loop(model, _loss, _Data(), out, _cfg(steps, **kw.pop("cfg", {})), save_fn, log=messages.append, **kw)
    return {k: v.clone() for k, v in model.state_dict().items()}, seen, messages


def _crash_at(step: int):
    def callback(done: int, loss: float) -> None:
        if done == step:
            raise KeyboardInterrupt

    return callback


def _assert_same(a, b) -> None:
    (weights_a, seen_a, _), (weights_b, seen_b, _) = a, b
    for name in weights_a:
        assert torch.equal(weights_a[name], weights_b[name]), name
        assert torch.equal(seen_a["ema"][name], seen_b["ema"][name]), name
    assert torch.equal(seen_a["rng"][0], seen_b["rng"][0])
    assert np.array_equal(seen_a["rng"][1], seen_b["rng"][1]) and seen_a["rng"][2] == seen_b["rng"][2]


@pytest.mark.parametrize("planted", ["random_states_0.pkl", "optimizer.bin", "extra/weights.pt"])
def test_a_planted_pickle_is_refused_by_name_and_never_unpickled(tmp_path, planted):
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Payload(probe)))
    assert probe.exists()  # the payload does run code when unpickled
    out, marker = tmp_path / "run", tmp_path / "pwned"
    _train(out, 4)
    newest = checkpoints(out)[-1][1]
    (newest / planted).parent.mkdir(exist_ok=True)
    (newest / planted).write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(DefectgenError) as info:
        _train(out, 6, resume=True)
    message = str(info.value)
    assert str(newest / planted) in message and "`trust_checkpoint`" in message and "\n" not in message
    assert not marker.exists()
    # trusted, the folder still loads from its safetensors and JSON: the stray file stays unread
    _, _, messages = _train(out, 6, resume=True, trust_checkpoint=True)
    assert any("resuming from" in m and "step 4" in m for m in messages)
    assert not marker.exists()


def test_a_checkpoint_folder_holds_only_safetensors_and_json(tmp_path):
    out = tmp_path / "run"
    _train(out, 6)
    found = checkpoints(out)
    assert [s for s, _ in found] == [4, 6]  # keep_checkpoints=2 pruned step 2
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    for step, folder in found:
        names = {p.name for p in folder.rglob("*")}
        assert names == {"model.safetensors", "optimizer.safetensors", "ema.safetensors", "rng-0.safetensors",
                         "rng-0.json", "state.json"}
        for p in folder.iterdir():
            assert p.read_bytes()[:2] not in (b"\x80\x02", b"\x80\x04", b"\x80\x05", b"PK"), p  # no pickle, no zip
        state = json.loads((folder / "state.json").read_text())
        assert state["step"] == step and state["config"]["steps"] == 6
        assert state["optimizer"]["param_groups"][0]["betas"] == [0.9, 0.999]
        assert checkpoint_problem(folder) is None


@pytest.mark.parametrize("save_on_interrupt", [True, False])
def test_resume_from_the_new_format_is_bit_exact(tmp_path, save_on_interrupt):
    whole = _train(tmp_path / "whole", 5)
    with pytest.raises(Interrupted):
        _train(tmp_path / "cut", 5, callback=_crash_at(3), cfg={"save_on_interrupt": save_on_interrupt})
    assert [s for s, _ in checkpoints(tmp_path / "cut")] == ([2, 3] if save_on_interrupt else [2])
    resumed = _train(tmp_path / "cut", 5, rng_seed=123, resume=True)
    assert any(f"at step {3 if save_on_interrupt else 2}" in m for m in resumed[2])
    _assert_same(whole, resumed)


def test_a_damaged_state_json_is_skipped_with_a_warning_naming_it(tmp_path):
    whole = _train(tmp_path / "whole", 5)
    with pytest.raises(Interrupted):  # same schedule as `whole` (cosine over 5 steps), checkpoints at 2 and 4
        _train(tmp_path / "cut", 5, callback=_crash_at(4))
    newest = checkpoints(tmp_path / "cut")[-1][1]
    (newest / "state.json").write_text('{"format": "defectgen-checkpoint", "step": ')
    assert str(newest / "state.json") in checkpoint_problem(newest)
    resumed = _train(tmp_path / "cut", 5, rng_seed=7, resume=True)
    assert any("warning" in m and str(newest / "state.json") in m for m in resumed[2])
    _assert_same(whole, resumed)


def test_trust_checkpoint_loads_an_older_accelerate_folder(tmp_path, monkeypatch):
    whole = _train(tmp_path / "whole", 5)
    with monkeypatch.context() as m:  # checkpoints as defectgen wrote them before: accelerate's save_state
        m.setattr(training, "_write_state", lambda run, folder, step: run.accelerator.save_state(str(folder)))
        with pytest.raises(Interrupted):  # the same 5-step schedule as `whole`, one checkpoint at step 2
            _train(tmp_path / "old", 5, callback=_crash_at(3), cfg={"save_on_interrupt": False})
    (folder,) = [p for _, p in checkpoints(tmp_path / "old")]
    assert list(folder.glob("*.pkl")) and checkpoint_problem(folder) is None
    with pytest.raises(DefectgenError, match="`trust_checkpoint`"):
        _train(tmp_path / "old", 5, resume=True)
    resumed = _train(tmp_path / "old", 5, rng_seed=123, resume=True, trust_checkpoint=True)
    assert any("at step 2" in m for m in resumed[2])
    _assert_same(whole, resumed)
    assert "state.json" in {p.name for p in checkpoints(tmp_path / "old")[-1][1].iterdir()}  # saved anew


def test_the_cli_refuses_a_planted_pickle_and_names_the_flag(tmp_path, rng, run_cli):
    from tests.conftest import texture, write_png

    for i in range(4):
        write_png(tmp_path / "good" / f"{i}.png", texture(rng, 32, 32))
    args = ("train-ddpm", "--normals", tmp_path / "good", "--preset", "tiny", "--resolution", "32",
            "--batch-size", "2", "--warmup", "0", "--checkpoint-every", "1", "--out", tmp_path / "run")
    code, _, err = run_cli(*args, "--steps", "2")
    assert code == 0, err
    newest = checkpoints(tmp_path / "run")[-1][1]
    marker = tmp_path / "ran.txt"
    with open(newest / "extra.pkl", "wb") as f:
        pickle.dump(_Payload(marker), f)
    code, _, err = run_cli(*args, "--steps", "4", "--resume")
    assert code == 2 and "extra.pkl" in err and "--trust-checkpoint" in err and "`" not in err, err
    assert not marker.exists()
