"""The device picker, the hardware record and the time estimate said before a long run."""

from __future__ import annotations

import torch

from defectgen import runtime


def test_pick_device_honours_the_request():
    assert runtime.pick_device("cpu") == torch.device("cpu")
    assert runtime.hardware("cpu")["device"] == "cpu"


def _fake_clock(monkeypatch, step_s: float):
    now = [1000.0]
    monkeypatch.setattr(runtime.time, "perf_counter", lambda: now[0])
    return lambda: now.__setitem__(0, now[0] + step_s)


def test_estimate_of_a_long_run_names_the_device_and_a_quicker_trial(monkeypatch):
    tick = _fake_clock(monkeypatch, 1.5)
    lines: list[str] = []
    est = runtime.RunEstimate(20000, "cpu", lines.append, what="train")
    for done in range(1, 8):
        tick()
        est.update(done)
    assert len(lines) == 1, lines  # said once, after the probe steps
    line = lines[0]
    assert "train: 20000 steps on cpu (" in line and "about 8.3 h" in line and "1.50 s/step" in line
    assert "a trial of 400 steps takes about 10 min" in line


def test_estimate_of_a_short_run_suggests_nothing_and_silent_without_a_log(monkeypatch):
    tick = _fake_clock(monkeypatch, 0.5)
    lines: list[str] = []
    est = runtime.RunEstimate(300, "cpu", lines.append)
    quiet = runtime.RunEstimate(300, "cpu", None)
    for done in range(1, 10):
        tick()
        est.update(done)
        quiet.update(done)
    assert len(lines) == 1 and "take about 2 min" in lines[0] and "trial" not in lines[0]
