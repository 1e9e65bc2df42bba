"""The validation experiment (`defectgen validate`) and what measures and reports generated defects; above
`detect` (the detectors) and `synth` (the generators), which it uses and which do not import it.

data (the inputs as typed records: `TestSet`, `TrainingSet`, `LabeledSet`, `Inputs`, and their loaders),
baselines (the baseline registry), runs (one detector trained and scored: `train_and_score`, `RunResult`),
experiment (`ValidationConfig`, `run_validation`), quality (KID, diversity, realism, class fidelity) and report
(contact sheets, dataset summaries, every file of a validate report).

The names below load their module when first used, so that importing `defectgen.evaluate.report` (the CLI, the
synthesis pipeline's contact sheet) does not load the detectors."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from defectgen.evaluate.baselines import (
        BASELINES,
        DEFAULT_BASELINES,
        Baseline,
        baseline_names,
        get_baseline,
        register_baseline,
    )
    from defectgen.evaluate.data import Inputs, LabeledSet, TestSet, TrainingSet, load_inputs
    from defectgen.evaluate.experiment import ValidationConfig, plan_runs, run_validation
    from defectgen.evaluate.runs import RunResult, train_and_score
    from defectgen.metrics import METRICS

_WHERE = {
    "ValidationConfig": "experiment", "run_validation": "experiment", "plan_runs": "experiment",
    "TestSet": "data", "TrainingSet": "data", "LabeledSet": "data", "Inputs": "data", "load_inputs": "data",
    "RunResult": "runs", "train_and_score": "runs",
    "Baseline": "baselines", "BASELINES": "baselines", "DEFAULT_BASELINES": "baselines",
    "baseline_names": "baselines", "get_baseline": "baselines", "register_baseline": "baselines",
}

__all__ = [
    "BASELINES", "DEFAULT_BASELINES", "METRICS", "Baseline", "Inputs", "LabeledSet", "RunResult", "TestSet",
    "TrainingSet", "ValidationConfig", "baseline_names", "get_baseline", "load_inputs", "plan_runs",
    "register_baseline", "run_validation", "train_and_score",
]


def __getattr__(name: str) -> Any:
    if name == "METRICS":
        from defectgen.metrics import METRICS

        return METRICS
    if name in _WHERE:
        return getattr(importlib.import_module(f"defectgen.evaluate.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
