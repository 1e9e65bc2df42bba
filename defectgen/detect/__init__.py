"""Anomaly detectors trained with synthetic defects (AST, ExDD), their backbones, and `validate`."""

from defectgen.detect.ast import AST
from defectgen.detect.backbone import Backbone, load_backbone
from defectgen.detect.exdd import ExDD
from defectgen.detect.training import train_ast

__all__ = ["AST", "Backbone", "ExDD", "load_backbone", "run_validation", "train_ast"]


def __getattr__(name: str):
    if name == "run_validation":  # validate pulls in the dataset readers and matplotlib: load it on demand
        from defectgen.detect.validate import run_validation

        return run_validation
    raise AttributeError(name)
