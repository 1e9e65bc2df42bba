"""Shared fixtures: tiny datasets built in tmp_path, and the CLI run in-process through its real entry point."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.ndim == 3 and array.shape[2] == 3:
        array = array[:, :, ::-1]  # RGB -> BGR for OpenCV
    assert cv2.imwrite(str(path), array)
    return path


def texture(rng: np.random.Generator, h: int = 32, w: int = 32, channels: int = 1) -> np.ndarray:
    img = rng.integers(60, 200, size=(h, w, channels), dtype=np.uint8)
    return img[:, :, 0] if channels == 1 else img


def square_mask(h: int, w: int, y0: int, x0: int, size: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[y0:y0 + size, x0:x0 + size] = 255
    return m


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models run fastest on one thread, and far faster than on two when other work shares the CPU."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _isolated_workspace(tmp_path, monkeypatch):
    """Every test runs in its own folder, so the workspace index and default outputs never land in the repo."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DEFECTGEN_CONFIG", raising=False)
    # No test reaches the network: the default backbone is the random tiny one unless a test says otherwise, and
    # the hub answers from the local cache only.
    monkeypatch.setenv("DEFECTGEN_BACKBONE", "tiny")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def mvtec_dir(tmp_path: Path, rng) -> Path:
    """train/good x4, test/good x2, test/scratch x2 with ground truth, labeled/scratch x2 pairs."""
    root = tmp_path / "mvtec"
    for i in range(4):
        write_png(root / "train" / "good" / f"{i}.png", texture(rng))
    for i in range(2):
        write_png(root / "test" / "good" / f"{i}.png", texture(rng))
        write_png(root / "test" / "scratch" / f"{i}.png", texture(rng))
        write_png(root / "ground_truth" / "scratch" / f"{i}_mask.png", square_mask(32, 32, 4 + i, 5, 6))
        write_png(root / "labeled" / "scratch" / f"l{i}.png", texture(rng))
        write_png(root / "labeled" / "scratch" / f"l{i}_mask.png", square_mask(32, 32, 10, 10 + i, 4))
    return root


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Run `defectgen ARGS...` through `defectgen.cli.main` (exit code, stdout, stderr), as a user's shell would."""
    from defectgen import cli

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["defectgen", *map(str, args)])
        code = 0
        try:
            cli.main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
