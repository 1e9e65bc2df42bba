"""Where work runs and what on: the one device picker and the one hardware record (reports and benchmarks)."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The device asked for, else CUDA, else Apple MPS, else the CPU."""
    if device:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    return torch.device("mps" if mps is not None and mps.is_available() else "cpu")


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def hardware(device: str | torch.device | None = None) -> dict[str, Any]:
    """CPU model and cores, torch threads and versions, and the GPU when there is one."""
    info: dict[str, Any] = {
        "cpu": cpu_name(), "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "device": str(device) if device is not None else str(pick_device()),
    }
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda)
    return info


def device_words(device: str | torch.device | None) -> str:
    """'cpu (AMD EPYC 7B13, 2 threads)' or 'cuda (NVIDIA H100 80GB HBM3)': what a person calls the machine."""
    dev = torch.device(device) if device is not None else pick_device()
    if dev.type == "cuda" and torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(dev)})"
    if dev.type == "cpu":
        return f"cpu ({cpu_name()}, {torch.get_num_threads()} threads)"
    return str(dev)


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class RunEstimate:
    """After the first steps of a long run (more than a few seconds, or `probe` steps), one line with the device
    and how long the whole run will take, with the step count that fits in ten minutes when it runs long. It
    informs; it never shrinks what the user asked for. The progress bar keeps the running ETA.

    `RunEstimate.start` gives the estimate a run should use: this one, or, while a `JobEstimate` is current, the
    job's (whose line speaks of every run of the job)."""

    LONG_S = 1800.0  # beyond this a quicker trial is worth suggesting
    QUICK_S = 600.0

    def __init__(self, total_steps: int, device, log, what: str = "training", probe: int = 5,
                 job: JobEstimate | None = None):
        self.total, self.device, self.log, self.what, self.probe = total_steps, device, log, what, probe
        self.job = job
        self.start_time = time.perf_counter()
        self.said = log is None
        self.done, self.elapsed = 0, 0.0

    @classmethod
    def start(cls, total_steps: int, device, log, what: str = "training", probe: int = 5) -> RunEstimate:
        """The estimate of a run of `total_steps` about to start: its own, or the current job's run."""
        job = JobEstimate.current()
        if job is not None:
            return job.run_estimate(total_steps, device, probe)
        return cls(total_steps, device, log, what, probe)

    def update(self, done: int) -> None:
        """Call after each step with the number of steps done (in this run)."""
        if done <= 0:
            return
        self.done, self.elapsed = done, time.perf_counter() - self.start_time
        if self.said or (done < self.probe and self.elapsed < 10):
            return
        self.said = True
        per_step = self.elapsed / done
        if self.job is not None:
            self.job.probed(self, per_step)
            return
        total = per_step * self.total
        line = (f"{self.what}: {self.total} steps on {device_words(self.device)} take about {duration(total)} "
                f"({per_step:.2f} s/step from the first {done})")
        if total > self.LONG_S:
            quick = max(int(self.QUICK_S / per_step), 1)
            line += f"; a trial of {quick} steps takes about {duration(quick * per_step)}"
        self.log(line)


class JobEstimate:
    """How long a job of several runs takes (validate: one detector trained per training set). Said once for the
    whole job after the first steps of its first run, and again as each further run starts ("run 2 of 3: ..."),
    with what is left of the job: the runs' steps at the measured time per step, plus the time the finished runs
    spent outside their steps (scoring, feature banks). Runs without steps (None: ExDD builds banks) are
    estimated from the finished runs' wall time.

    Usage: `with job.current_job(): for name in ...: job.start(name); ...; job.finish()`; the runs' training
    loops take their estimate from `RunEstimate.start`, which hands out the job's while it is current."""

    _current: JobEstimate | None = None

    def __init__(self, runs: Sequence[tuple[str, int | None]], device, log, what: str = "validate"):
        self.runs = [(str(name), None if steps is None else int(steps)) for name, steps in runs]
        self.device, self.log, self.what = device, log, what
        self.index = -1  # the run under way
        self.run_start = 0.0
        self.estimate: RunEstimate | None = None  # the steps of the run under way
        self.finished: list[tuple[float, float]] = []  # (wall seconds, seconds of steps) of each finished run
        self.said_whole = False

    @classmethod
    def current(cls) -> JobEstimate | None:
        return cls._current

    @contextlib.contextmanager
    def current_job(self):
        """Makes this the job whose runs `RunEstimate.start` reports to."""
        before, JobEstimate._current = JobEstimate._current, self
        try:
            yield self
        finally:
            JobEstimate._current = before

    def drop(self, name: str) -> None:
        """A planned run that will not run after all (a pseudo-label twin without labels)."""
        self.runs = [r for i, r in enumerate(self.runs) if r[0] != name or i <= self.index]

    def start(self, name: str) -> None:
        """Run `name` (one of the planned runs) starts now. A run without steps is estimated at once."""
        names = [r[0] for r in self.runs]
        if name not in names:  # not planned: added where it runs
            self.runs.insert(self.index + 1, (name, None))
            names.insert(self.index + 1, name)
        self.index = names.index(name)
        self.run_start = time.perf_counter()
        self.estimate = None
        if self.runs[self.index][1] is None and self.finished and self.log is not None:
            wall = sum(w for w, _ in self.finished) / len(self.finished)
            self.log(f"{self._run_words()}: about {duration(wall)} (the mean of the runs so far); about "
                     f"{duration(wall * (len(self.runs) - self.index))} left in all")

    def finish(self) -> None:
        """The run under way is done."""
        wall = time.perf_counter() - self.run_start
        self.finished.append((wall, self.estimate.elapsed if self.estimate is not None else 0.0))
        self.estimate = None

    def run_estimate(self, total_steps: int, device, probe: int = 5) -> RunEstimate:
        """The estimate the run under way reports its steps to."""
        if self.index < 0:  # steps before any `start`: the first planned run
            self.start(self.runs[0][0])
        self.estimate = RunEstimate(total_steps, device, self.log, self.what, probe, job=self)
        return self.estimate

    def _run_words(self) -> str:
        return f"run {self.index + 1} of {len(self.runs)} ({self.runs[self.index][0]})"

    def _overhead(self) -> float:
        """Mean seconds a finished run spent outside its steps (0 before any run finished)."""
        return sum(w - s for w, s in self.finished) / len(self.finished) if self.finished else 0.0

    def probed(self, run: RunEstimate, per_step: float) -> None:
        """The run under way measured its time per step: say the job's line."""
        if self.log is None:
            return
        overhead = self._overhead()
        this = per_step * run.total
        later = [steps for _, steps in self.runs[self.index + 1:]]
        left = (this - run.elapsed + overhead + sum(per_step * (s if s is not None else run.total) + overhead
                                                    for s in later))
        if not self.said_whole:
            self.said_whole = True
            steps = {s for _, s in self.runs}
            each = f"of {run.total} steps each" if steps == {run.total} else "of " + ", ".join(
                str(s) for _, s in self.runs) + " steps"
            names = ", ".join(name for name, _ in self.runs)
            line = (f"{self.what}: {len(self.runs)} run{'s' if len(self.runs) != 1 else ''} ({names}) {each} on "
                    f"{device_words(run.device)} take about {duration(run.elapsed + left)} of training in all "
                    f"({per_step:.2f} s/step from the first {run.done} steps); {self._run_words()}: about "
                    f"{duration(this)}")
            if run.elapsed + left > RunEstimate.LONG_S:
                quick = max(int(RunEstimate.QUICK_S / (per_step * len(self.runs))), 1)
                line += (f"; a trial of {quick} steps a run takes about "
                         f"{duration(quick * per_step * len(self.runs))} of training in all")
            self.log(line)
            return
        self.log(f"{self._run_words()}: {run.total} steps take about {duration(this)} ({per_step:.2f} s/step); "
                 f"about {duration(left)} left in all")
