"""Detectors trained with synthetic defects (AST, ExDD: anomaly detectors; seg: supervised segmentation), their
backbones, one detector interface with a registry, and `validate`."""

from defectgen.detect.ast import AST
from defectgen.detect.backbone import Backbone, load_backbone
from defectgen.detect.base import (
    DETECTORS,
    Detector,
    DetectorOptions,
    detector_names,
    get_detector,
    load_detector,
    register_detector,
)
from defectgen.detect.exdd import ExDD
from defectgen.detect.seg import Seg
from defectgen.detect.training import train_ast

__all__ = [
    "AST", "DETECTORS", "Backbone", "Detector", "DetectorOptions", "ExDD", "Seg", "detector_names", "get_detector",
    "load_backbone", "load_detector", "register_detector", "run_validation", "train_ast",
]


def __getattr__(name: str):
    if name == "run_validation":  # validate pulls in the dataset readers and matplotlib: load it on demand
        from defectgen.detect.validate import run_validation

        return run_validation
    raise AttributeError(name)
