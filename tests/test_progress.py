"""Progress where stderr is not a terminal (CI, nohup, `2> log`), and the whole-job time estimate of validate."""

from __future__ import annotations

import torch

from defectgen import runtime
from defectgen.detect.features import greedy_coreset
from defectgen.detect.training import StepLoop


def _fake_clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(runtime.time, "perf_counter", lambda: now[0])
    return lambda seconds: now.__setitem__(0, now[0] + seconds)


def _loop(steps: int, progress: bool = True, desc: str = "ast") -> StepLoop:
    layer = torch.nn.Linear(2, 1)
    return StepLoop(torch.optim.SGD(layer.parameters(), lr=0.1), steps, 0.1, 4, progress, desc), layer


def test_training_loop_prints_plain_progress_lines_when_redirected(capsys, monkeypatch):
    monkeypatch.setenv("DEFECTGEN_PROGRESS_SECONDS", "0")
    loop, layer = _loop(3, desc="[none] ast")
    for _ in range(3):
        loop.step(layer(torch.ones(1, 2)).pow(2).sum())
    loop.close()
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("[none] ast")]
    assert len(lines) >= 2 and "3/3" in lines[-1], err  # a line as it goes, and one saying it finished


def test_coreset_prints_progress_lines_when_redirected(capsys, monkeypatch):
    monkeypatch.setenv("DEFECTGEN_PROGRESS_SECONDS", "0")
    x = torch.randn(3000, 4, generator=torch.Generator().manual_seed(0))
    greedy_coreset(x, 300, progress=True, desc="exdd: coreset", loop_rows=0, pool=64)  # the sweeps
    greedy_coreset(x, 30, progress=True, desc="small: coreset")  # the one-at-a-time loop
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("exdd: coreset")][-1].count("300/300") == 1, err
    assert "30/30" in [line for line in err.splitlines() if line.startswith("small: coreset")][-1], err


def test_job_estimate_counts_every_run_and_updates_per_run(monkeypatch):
    tick = _fake_clock(monkeypatch)
    lines: list[str] = []
    job = runtime.JobEstimate([("synthetic", 1000), ("none", 1000), ("draem", 1000)], "cpu", lines.append)
    with job.current_job():
        for run, name in enumerate(("synthetic", "none", "draem")):
            job.start(name)
            est = runtime.RunEstimate.start(1000, "cpu", None, what=f"[{name}] ast")  # as StepLoop asks for it
            assert est.job is job
            for done in range(1, 8):
                tick(4.74)
                est.update(done)
            tick(4.74 * 993)  # the rest of the steps
            est.update(1000)
            tick(60.0)  # a minute of scoring
            job.finish()
            assert len(lines) == run + 1, lines
    assert runtime.JobEstimate.current() is None
    first = lines[0]
    # the whole job (three runs), not the first run alone
    assert first.startswith("validate: 3 runs (synthetic, none, draem) of 1000 steps each on cpu ("), first
    assert "about 4.0 h of training in all" in first and "4.74 s/step from the first 3 steps" in first  # 10 s in
    assert "run 1 of 3 (synthetic): about 79 min" in first
    assert "a trial of 42 steps a run takes about 10 min of training in all" in first
    # run 2: its own time, and what is left of the job with the scoring the first run measured
    # left = 997 steps x 4.74 s + 60 s + (1000 x 4.74 s + 60 s) = 9586 s
    assert lines[1] == "run 2 of 3 (none): 1000 steps take about 79 min (4.74 s/step); about 2.7 h left in all"
    assert lines[2].startswith("run 3 of 3 (draem): 1000 steps take about 79 min") and "80 min left" in lines[2]


def test_job_estimate_of_runs_without_steps_and_a_dropped_run(monkeypatch):
    tick = _fake_clock(monkeypatch)
    lines: list[str] = []
    job = runtime.JobEstimate([("synthetic", None), ("synthetic+pseudo", None), ("none", None)], "cpu",
                              lines.append)
    job.start("synthetic")
    tick(300.0)
    job.drop("synthetic+pseudo")  # its teacher found nothing
    job.finish()
    job.start("none")
    assert lines == ["run 2 of 2 (none): about 5 min (the mean of the runs so far); about 5 min left in all"]


def test_training_loop_outside_a_job_keeps_its_own_estimate(monkeypatch):
    tick = _fake_clock(monkeypatch)
    lines: list[str] = []
    est = runtime.RunEstimate.start(300, "cpu", lines.append, what="train")
    assert est.job is None
    for done in range(1, 7):
        tick(0.5)
        est.update(done)
    assert len(lines) == 1 and lines[0].startswith("train: 300 steps on cpu")
