"""Sensitivity estimators: how much each unit's (or group's) loss suffers from quantization noise.

Every estimator has one interface, ``estimate(model, data, space) -> Sensitivity``,
takes ``seed`` and ``progress`` options, and is registered by name in
:data:`ESTIMATORS` (``get_estimator("fisher")``). :func:`build_cost_table` turns any
result into a CostTable; :class:`SensitivityCache` stores results on disk;
:func:`distill_bn_data` makes data-free (ZeroQ) calibration inputs.
"""

from __future__ import annotations

from .base import (
    ESTIMATORS,
    Calibration,
    Estimator,
    Sensitivity,
    build_cost_table,
    get_estimator,
    pseudo_label_loss,
    quantization_errors,
    quantization_group_errors,
)
from .cache import CacheWarning, SensitivityCache, cached_estimate
from .distill import DistilledData, bn_statistics_loss, distill_bn_data
from .embedding import LayerInputModification, ZScoreOutliers
from .hessian import HutchinsonTrace
from .hessian_diag import HutchinsonDiagonal
from .hessian_eig import PowerIterationEigen
from .losses import embedding_distillation_loss, embedding_gn_calibration, minilm_calibration
from .perturbation import PerturbationKL
from .relevance import LayerRelevance
from .salience import FirstOrderSalience, FisherDiagonal, GradientOutliers
from .salience_obs import OBSSalience

__all__ = [
    "ESTIMATORS",
    "CacheWarning",
    "Calibration",
    "DistilledData",
    "Estimator",
    "FirstOrderSalience",
    "FisherDiagonal",
    "GradientOutliers",
    "HutchinsonDiagonal",
    "HutchinsonTrace",
    "LayerInputModification",
    "LayerRelevance",
    "OBSSalience",
    "PerturbationKL",
    "PowerIterationEigen",
    "Sensitivity",
    "SensitivityCache",
    "ZScoreOutliers",
    "bn_statistics_loss",
    "build_cost_table",
    "cached_estimate",
    "distill_bn_data",
    "embedding_distillation_loss",
    "get_estimator",
    "minilm_calibration",
    "embedding_gn_calibration",
    "pseudo_label_loss",
    "quantization_errors",
    "quantization_group_errors",
]
