"""Sensitivity estimators: how much each unit's (or group's) loss suffers from quantization noise.

Every estimator has one interface, ``estimate(model, data, space) -> Sensitivity``,
takes ``seed`` and ``progress`` options, and is registered by name in
:data:`ESTIMATORS` (``get_estimator("fisher")``). :func:`mpsearch.pricing.build_cost_table` turns any
result into a CostTable; :class:`SensitivityCache` stores results on disk;
:func:`distill_bn_data` makes data-free (ZeroQ) calibration inputs.
"""

from __future__ import annotations

from mpsearch.sensitivity.base import ESTIMATORS, Estimator, Sensitivity, get_estimator
from mpsearch.sensitivity.cache import CacheWarning, SensitivityCache, cached_estimate
from mpsearch.sensitivity.calibration import Calibration, pseudo_label_loss
from mpsearch.sensitivity.distill import DistilledData, bn_statistics_loss, distill_bn_data
from mpsearch.sensitivity.embedding import LayerInputModification, ZScoreOutliers
from mpsearch.sensitivity.hessian import HutchinsonTrace
from mpsearch.sensitivity.hessian_diag import HutchinsonDiagonal
from mpsearch.sensitivity.hessian_eig import PowerIterationEigen
from mpsearch.sensitivity.losses import embedding_distillation_loss, embedding_gn_calibration, minilm_calibration
from mpsearch.sensitivity.perturbation import PerturbationKL
from mpsearch.sensitivity.relevance import LayerRelevance
from mpsearch.sensitivity.salience import FirstOrderSalience, FisherDiagonal, GradientOutliers
from mpsearch.sensitivity.salience_obs import OBSSalience

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
    "cached_estimate",
    "distill_bn_data",
    "embedding_distillation_loss",
    "embedding_gn_calibration",
    "get_estimator",
    "minilm_calibration",
    "pseudo_label_loss",
]
