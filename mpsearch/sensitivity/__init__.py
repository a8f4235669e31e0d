"""Sensitivity estimators: how much each unit's loss suffers from quantization noise."""

from __future__ import annotations

from .base import (
    ESTIMATORS,
    Calibration,
    Estimator,
    Sensitivity,
    build_cost_table,
    get_estimator,
    quantization_errors,
)
from .hessian import HutchinsonTrace

__all__ = [
    "ESTIMATORS",
    "Calibration",
    "Estimator",
    "Sensitivity",
    "HutchinsonTrace",
    "build_cost_table",
    "get_estimator",
    "quantization_errors",
]
