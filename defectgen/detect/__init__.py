"""Detectors trained with synthetic defects (AST, ExDD: anomaly detectors; seg: supervised segmentation; det:
boxes), their backbones, and one detector interface with a registry. The experiment that trains and scores them
(`defectgen validate`) is `defectgen.evaluate`, which sits above this package."""

from defectgen.detect.ast import AST, train_ast
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

__all__ = [
    "AST", "DETECTORS", "Backbone", "Detector", "DetectorOptions", "ExDD", "Seg", "detector_names", "get_detector",
    "load_backbone", "load_detector", "register_detector", "train_ast",
]
